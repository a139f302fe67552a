module github.com/imprint/imprint-go

go 1.19
