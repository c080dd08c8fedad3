package wire

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"time"
)

// The challenge handshake (spec.md "Handshake"): a client that has the
// token proves it knows it, and has the server prove it too, without the
// token going on the wire.
//
//	client → HELLO{..., auth_nonce: cn}                (no token)
//	server → Hello reply{auth_nonce: sn, auth_proof: HMAC(token, "tq-server" || cn || sn)}
//	client → HELLO{auth_proof: HMAC(token, "tq-client" || sn || cn || SHA-256(first HELLO body))}
//	server → Hello reply (as to a HELLO that carried the token), or its error reply
//
// A client that finds the server's proof wrong answers the challenge with
// no proof (refused as a wrong token is) and closes.
//
// The nonces are fresh on each connection (the server's from a CSPRNG), so
// a proof opens the connection it was made for only.

// AuthNonceLen is the length of both nonces, exactly: with fixed
// lengths, the concatenations the proofs cover split one way only.
const AuthNonceLen = 32

// giveUpWait bounds the wait for the answer to the proof-less HELLO a
// client sends a server whose proof was wrong.
const giveUpWait = time.Second

const (
	labelServer = "tq-server"
	labelClient = "tq-client"
)

func authNonce() []byte {
	b := make([]byte, AuthNonceLen)
	rand.Read(b) // never fails (crypto/rand)
	return b
}

// serverProof is what a server answers a client nonce cn with, having
// picked its nonce sn.
func serverProof(token string, cn, sn []byte) []byte {
	return authMAC(token, labelServer, cn, sn)
}

// clientProof is what a client sends back for the challenge sn to its
// nonce cn; first is the body of its first HELLO.
func clientProof(token string, sn, cn, first []byte) []byte {
	sum := sha256.Sum256(first)
	return authMAC(token, labelClient, sn, cn, sum[:])
}

func authMAC(token, label string, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(label))
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func validNonce(b []byte) bool { return len(b) == AuthNonceLen }
