module github.com/ccatobs/ccat-staging/deploy

go 1.26.0

require (
	github.com/ccatobs/ccat-staging/schemas v0.0.0-00010101000000-000000000000
	github.com/ccatobs/ccat-staging/shared v0.0.0-00010101000000-000000000000
)

replace (
	github.com/ccatobs/ccat-staging/schemas => ../schemas
	github.com/ccatobs/ccat-staging/shared => ../shared
)
