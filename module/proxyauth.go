package module

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
)

// ProxyAuth guards a shared gateway's CONNECT and proxy-form requests with
// Basic Proxy-Authorization.
type ProxyAuth struct {
	// The proxy username the apps send.
	Username string `json:"username"`
	// A bcrypt or argon2id hash of the proxy password (`kustom-shim
	// hash-password`), checked through Caddy's basic_auth comparers.
	PasswordHash string `json:"password_hash"`
}

// provision checks the proxy_auth config and returns the comparer for its
// hash, or nil when p is nil (no proxy authentication).
func (p *ProxyAuth) provision(ctx caddy.Context) (*caddyauth.HTTPBasicAuth, error) {
	if p == nil {
		return nil, nil
	}
	if p.Username == "" {
		return nil, fmt.Errorf("proxy_auth: a username is required")
	}
	algo, err := hashAlgorithm(p.PasswordHash)
	if err != nil {
		return nil, fmt.Errorf("proxy_auth: password_hash: %v", err)
	}
	hashers, err := provisionHashers(ctx, map[string][]caddyauth.Account{
		algo: {{Username: p.Username, Password: p.PasswordHash}},
	})
	if err != nil {
		return nil, fmt.Errorf("proxy_auth: %v", err)
	}
	return hashers[algo], nil
}

// proxyAuthorized checks Proxy-Authorization when proxy_auth is set. It
// returns "" when the caller may go on, ReasonProxyAuthRequired when the
// credentials are missing or wrong, and ReasonTooManyRequests when the
// password would have to be hashed while every hash slot is taken: hash work
// is bounded as for klarna_password_hash (see checkHashed), and "busy" must
// not read as "wrong" to an app whose password is right. An unknown proxy
// username is refused without hashing a stand-in password: like a Klarna
// username it is not a secret, and a stand-in hash would be free CPU for a
// flood.
func (c *connectIntercept) proxyAuthorized(r *http.Request) Reason {
	if c == nil || c.auth == nil {
		return ""
	}
	var buf [basicBufSize]byte
	user, pass, ok := decodeBasic(r.Header.Get("Proxy-Authorization"), buf[:])
	if !ok {
		return ReasonProxyAuthRequired
	}
	account, found := c.auth.Accounts[string(user)]
	if !found {
		return ReasonProxyAuthRequired
	}
	switch checkHashed(r.Context(), c.auth.Hash, account.Password, pass) {
	case passwordRight:
		return ""
	case passwordBusy:
		return ReasonTooManyRequests
	}
	return ReasonProxyAuthRequired
}
