package module

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// VerifyResult is the outcome of checking one credential against Kustom.
type VerifyResult struct {
	Credential string `json:"credential"`
	Host       string `json:"host"`
	Status     int    `json:"status,omitempty"`
	OK         bool   `json:"ok"`
	Result     string `json:"result"`
	Action     string `json:"action,omitempty"`
}

// VerifyPath is read with each credential: an order id that cannot exist, so
// the call changes nothing and Kustom answers 404 to an accepted key and
// 401/403 to a refused one.
const VerifyPath = "/ordermanagement/v1/orders/kustom-shim-verify-00000000-0000-0000-0000-000000000000"

const verifyAdvice = "generate a new API key in the Kustom Portal (Integrations → Generate new), " +
	"store the secret where this credential's placeholder reads it (Kustom shows it only once), and reload"

// VerifyCredentials makes one harmless authenticated call per configured
// credential of h (an unprovisioned handler, as decoded from the config), to
// the Kustom host its key is for: the playground for kco_test_ keys,
// production for kco_live_ keys, otherwise the handler's default target. It
// dials like the handler would (upstream override, transport options) and
// never returns or prints a secret.
func VerifyCredentials(ctx caddy.Context, h *Handler) ([]VerifyResult, error) {
	hosts, err := NewHostMap(h.Map, h.DefaultTarget)
	if err != nil {
		return nil, err
	}
	_, creds, err := NewCredentialStore(ctx, h.Credentials, UnknownReject)
	if err != nil {
		return nil, err
	}
	dialOverride, err := parseUpstreamOverride(h.Upstream)
	if err != nil {
		return nil, err
	}
	transports := map[string]http.RoundTripper{}
	var out []VerifyResult
	for _, c := range creds {
		host := hosts.defaultTarget
		switch {
		case c.Environment == TargetProduction:
			host = KustomProduction
		case c.Environment == TargetPlayground:
			host = KustomPlayground
		case host == "":
			host = KustomProduction
		}
		dial := host + ":443"
		if dialOverride != "" {
			dial = dialOverride
		}
		rt := transports[host]
		if rt == nil {
			tr, err := transportFor(upstreamTarget{host: host, dial: dial, tls: true}, h.TransportRaw)
			if err != nil {
				return nil, err
			}
			mod, err := ctx.LoadModuleByID("http.reverse_proxy.transport.http", caddyconfig.JSON(tr, nil))
			if err != nil {
				return nil, fmt.Errorf("transport: %v", err)
			}
			rt = mod.(http.RoundTripper)
			transports[host] = rt
		}
		out = append(out, verifyOne(ctx, rt, c, host, dial))
	}
	return out, nil
}

func verifyOne(ctx context.Context, rt http.RoundTripper, c ResolvedCredential, host, dial string) VerifyResult {
	res := VerifyResult{Credential: c.Name, Host: host}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "https://"+dial+VerifyPath, nil)
	if err != nil {
		res.Result = "error: " + err.Error()
		return res
	}
	req.Host = host
	req.Header.Set("Authorization", c.Authorization)
	req.Header.Set("User-Agent", "kustom-shim-verify")
	req.Header.Set("Accept", "application/json")
	resp, err := rt.RoundTrip(req)
	if err != nil {
		// Transport errors name the address and the cause, never headers.
		res.Result = "unreachable: " + err.Error()
		res.Action = "check the network path to " + host + " (DNS, firewall, transport settings)"
		return res
	}
	resp.Body.Close()
	res.Status = resp.StatusCode
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode < 300:
		res.OK, res.Result = true, fmt.Sprintf("accepted (%d)", resp.StatusCode)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		res.Result, res.Action = fmt.Sprintf("rejected (%d)", resp.StatusCode), verifyAdvice
	default:
		res.Result = fmt.Sprintf("unexpected status %d", resp.StatusCode)
		res.Action = "try again later; if it persists, check Kustom's status and the key"
	}
	return res
}
