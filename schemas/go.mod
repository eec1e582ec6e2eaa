module github.com/ccatobs/ccat-staging/schemas

go 1.26.0
