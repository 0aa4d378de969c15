package module

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRefusalShape: every answer the shim makes itself has the status of its
// cause and the error shape Klarna's client libraries parse, with the
// correlation id in both places.
func TestRefusalShape(t *testing.T) {
	cases := []struct {
		reason Reason
		status int
		code   string
	}{
		{ReasonMissingCredentials, http.StatusUnauthorized, "UNAUTHORIZED"},
		{ReasonMalformedAuthorization, http.StatusUnauthorized, "UNAUTHORIZED"},
		{ReasonUnknownUsername, http.StatusUnauthorized, "UNAUTHORIZED"},
		{ReasonWrongPassword, http.StatusUnauthorized, "UNAUTHORIZED"},
		{ReasonUnmatchedPath, http.StatusForbidden, "FORBIDDEN"},
		{ReasonUnknownTarget, http.StatusMisdirectedRequest, "MISDIRECTED_REQUEST"},
		{ReasonRequestTooLarge, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE"},
		{ReasonBadRequestBody, http.StatusBadRequest, "BAD_VALUE"},
		{ReasonResponseTooLarge, http.StatusBadGateway, "BAD_GATEWAY"},
		{ReasonUpstreamUnreachable, http.StatusBadGateway, "BAD_GATEWAY"},
		{ReasonUpstreamTimeout, http.StatusGatewayTimeout, "GATEWAY_TIMEOUT"},
		{ReasonConnectRefused, http.StatusForbidden, "FORBIDDEN"},
		{ReasonProxyRefused, http.StatusForbidden, "FORBIDDEN"},
		{ReasonProxyAuthRequired, http.StatusProxyAuthRequired, "PROXY_AUTHENTICATION_REQUIRED"},
		{ReasonTooManyRequests, http.StatusTooManyRequests, "TOO_MANY_REQUESTS"},
		{ReasonHeadersTooLarge, http.StatusRequestHeaderFieldsTooLarge, "REQUEST_HEADER_FIELDS_TOO_LARGE"},
		{ReasonUpgradeRefused, http.StatusBadRequest, "BAD_VALUE"},
	}
	tested := map[Reason]bool{}
	for _, c := range cases {
		tested[c.reason] = true
		t.Run(string(c.reason), func(t *testing.T) {
			if c.reason.Status() != c.status {
				t.Errorf("Status() = %d, want %d", c.reason.Status(), c.status)
			}
			body := checkRefusal(t, c.reason, c.status, "0b1f2c3d-4e5f-6789-abcd-ef0123456789")
			if body.ErrorCode != c.code {
				t.Errorf("error_code %q, want %q", body.ErrorCode, c.code)
			}
		})
	}
	// A reason added to the table without a test case is still checked for
	// the shape, and reported.
	for r, k := range refusals {
		if !tested[r] {
			t.Errorf("reason %q has no case in TestRefusalShape", r)
			checkRefusal(t, r, k.status, "corr-untested")
		}
	}
}

// checkRefusal writes one refusal and checks what every refusal must carry.
func checkRefusal(t *testing.T, reason Reason, status int, correlationID string) errorBody {
	t.Helper()
	rec := httptest.NewRecorder()
	WriteRefusal(rec, reason, correlationID)
	res := rec.Result()
	if res.StatusCode != status {
		t.Errorf("%s: status %d, want %d", reason, res.StatusCode, status)
	}
	if got := res.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("%s: Content-Type %q", reason, got)
	}
	if got := res.Header.Get(ErrorHeader); got != string(reason) {
		t.Errorf("%s: %s %q", reason, ErrorHeader, got)
	}
	if got := res.Header.Values(CorrelationHeader); len(got) != 1 || got[0] != correlationID {
		t.Errorf("%s: %s %q, want %q", reason, CorrelationHeader, got, correlationID)
	}
	if got := res.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("%s: Cache-Control %q, want no-store", reason, got)
	}
	wwwAuth := res.Header.Get("WWW-Authenticate")
	if status == http.StatusUnauthorized {
		if !strings.HasPrefix(wwwAuth, "Basic ") {
			t.Errorf("%s: 401 without a Basic WWW-Authenticate (%q)", reason, wwwAuth)
		}
	} else if wwwAuth != "" {
		t.Errorf("%s: %d with WWW-Authenticate %q", reason, status, wwwAuth)
	}
	if proxyAuth := res.Header.Get("Proxy-Authenticate"); (status == http.StatusProxyAuthRequired) != strings.HasPrefix(proxyAuth, "Basic ") {
		t.Errorf("%s: %d with Proxy-Authenticate %q", reason, status, proxyAuth)
	}
	if retry := res.Header.Get("Retry-After"); (status == http.StatusTooManyRequests) != (retry != "") {
		t.Errorf("%s: %d with Retry-After %q", reason, status, retry)
	}

	raw := rec.Body.Bytes()
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatalf("%s: body %q is not a JSON object: %v", reason, raw, err)
	}
	if len(keys) != 3 || keys["error_code"] == nil || keys["error_messages"] == nil || keys["correlation_id"] == nil {
		t.Errorf("%s: body keys %v, want exactly error_code, error_messages, correlation_id", reason, mapKeys(keys))
	}
	var body errorBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("%s: body %q: %v", reason, raw, err)
	}
	if body.CorrelationID != correlationID {
		t.Errorf("%s: correlation_id %q, header %q", reason, body.CorrelationID, correlationID)
	}
	if body.ErrorCode == "" {
		t.Errorf("%s: empty error_code", reason)
	}
	if len(body.ErrorMessages) == 0 {
		t.Errorf("%s: no error_messages", reason)
	}
	for _, m := range body.ErrorMessages {
		if !strings.HasPrefix(m, "kustom-shim: ") {
			t.Errorf("%s: message %q does not say it comes from the shim", reason, m)
		}
	}
	return body
}

func mapKeys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestRefusalUnknownReason: a reason missing from the table is still an
// answer in the Klarna shape, a 500, not an empty 200.
func TestRefusalUnknownReason(t *testing.T) {
	body := checkRefusal(t, Reason("no_such_reason"), http.StatusInternalServerError, "corr-1")
	if body.ErrorCode != "INTERNAL_ERROR" {
		t.Errorf("error_code %q", body.ErrorCode)
	}
	if Reason("no_such_reason").Status() != 0 && Reason("no_such_reason").Status() != http.StatusInternalServerError {
		t.Errorf("Status() of an unknown reason = %d", Reason("no_such_reason").Status())
	}
}

// TestRefusalBodyReadable: the hint in the unmatched_path message is written
// as the Caddyfile has it, not HTML-escaped.
func TestRefusalBodyReadable(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteRefusal(rec, ReasonUnmatchedPath, "c")
	if !strings.Contains(rec.Body.String(), "`unmatched passthrough <url>`") {
		t.Errorf("body %q does not carry the Caddyfile hint verbatim", rec.Body)
	}
}
