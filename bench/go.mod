module github.com/ccatobs/ccat-staging/bench

go 1.26.0

require (
	github.com/ccatobs/ccat-staging/schemas v0.0.0-00010101000000-000000000000
	github.com/ccatobs/ccat-staging/services/ledger v0.0.0-00010101000000-000000000000
	github.com/ccatobs/ccat-staging/services/planner v0.0.0-00010101000000-000000000000
	github.com/ccatobs/ccat-staging/services/stager v0.0.0-00010101000000-000000000000
	github.com/ccatobs/ccat-staging/shared v0.0.0-00010101000000-000000000000
)

replace (
	github.com/ccatobs/ccat-staging/services/ledger => ../services/ledger
	github.com/ccatobs/ccat-staging/services/planner => ../services/planner
	github.com/ccatobs/ccat-staging/services/stager => ../services/stager
	github.com/ccatobs/ccat-staging/schemas => ../schemas
	github.com/ccatobs/ccat-staging/shared => ../shared
)
