module github.com/ccatobs/ccat-staging/devkit

go 1.26.0

replace (
	github.com/ccatobs/ccat-staging/schemas => ../schemas
	github.com/ccatobs/ccat-staging/shared => ../shared
)
