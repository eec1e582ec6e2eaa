module github.com/ccatobs/ccat-staging/devkit/inproc

go 1.26.0

replace (
	github.com/ccatobs/ccat-staging/devkit => ../
	github.com/ccatobs/ccat-staging/schemas => ../../schemas
	github.com/ccatobs/ccat-staging/services/ledger => ../../services/ledger
	github.com/ccatobs/ccat-staging/services/planner => ../../services/planner
	github.com/ccatobs/ccat-staging/services/stager => ../../services/stager
	github.com/ccatobs/ccat-staging/shared => ../../shared
)
