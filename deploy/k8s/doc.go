// Package k8s holds TQ's Kubernetes manifests (kustomize: kubectl apply -k
// deploy/k8s) and, in its test, their check: every manifest is decoded
// strictly into the Kubernetes API types, the references between them are
// followed (selectors, ports, volumes, Secrets, ConfigMaps, claims, the
// downward API), and the arguments of every `tq serve` container are put
// to `tq serve --check-config`:
//
//	go test ./deploy/k8s
//
// It has no Go API; nothing imports it.
package k8s
