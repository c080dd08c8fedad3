// Package prometheus holds a Prometheus scrape job for the pods of
// deploy/k8s (tq-scrape.yaml) and, in its test, its check: promtool
// accepts it, and it selects the pods, the namespace and the port the
// manifests define:
//
//	go test ./deploy/prometheus
//
// It has no Go API; nothing imports it.
package prometheus
