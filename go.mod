module github.com/tqgo/tq

go 1.26.8
