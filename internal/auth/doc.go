// Package auth finds a user's TQ data directory and the token that guards
// a cluster: the server side creates the token on first start, clients of
// the same user find it with no flag.
//
//	dir, err := auth.DefaultDataDir()        // $TQ_DATA_DIR, $XDG_STATE_HOME/tq, ~/.local/state/tq
//	tok, err := auth.LoadOrCreateToken(dir)  // tq serve: DATADIR/token, 0600
//	tok, err := auth.FindToken(cfg.Token)    // a client: explicit, $TQ_TOKEN, then DATADIR/token
//
// The data directory holds the token (DATADIR/token), the controller's
// state (DATADIR/controller/) and its checkpoints (DATADIR/checkpoints/).
// It and every directory TQ puts sockets in must be private: owned by the
// user and writable by nobody else ([EnsurePrivateDir]); the token file
// must be readable by the user alone.
package auth
