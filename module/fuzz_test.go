package module

// Fuzz targets (issue 6). Each one checks its function against an
// independent model of what it must do, not only that it does not panic. The
// f.Add seeds and the checked-in corpus under testdata/fuzz/<Name>/ run as
// ordinary tests with `go test`; `go test -fuzz '^FuzzName$'` explores.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/bcrypt"
)

// ---------------------------------------------------------------------------
// FuzzBasicAuthorization

// fzCred is one configured credential together with what the model needs to
// know about it.
type fzCred struct {
	name, user, pass string
	hash             string // "", "bcrypt" or "argon2id": how the Klarna password is configured
	cred             Credential
	authorization    string // the exact outgoing Authorization on a swap
}

// fzCredentials builds the credential set of FuzzBasicAuthorization: every
// form of Klarna password (plaintext placeholder, bcrypt, argon2id) and of
// Kustom credential (API key alone, username+password, username+API key),
// usernames with spaces and non-ASCII, and a password holding ':'.
func fzCredentials(f *testing.F) []fzCred {
	f.Helper()
	secrets := map[string]string{
		"KSFZ_KLARNA_PW1": "klarna-pw-Fz81",
		"KSFZ_KLARNA_PW2": "pa:ss:w\u00f6rd",
		"KSFZ_KLARNA_PW3": "\u65e5\u672c\u8a9e-pw",
		"KSFZ_KUSTOM_KEY": "kco_test_api_fuzz-Key1",
		"KSFZ_KUSTOM_PW":  "kustom-pw-Fz77",
		"KSFZ_LIVE_KEY":   "kco_live_api_fuzz-Key2",
	}
	for k, v := range secrets {
		os.Setenv(k, v)
		f.Cleanup(func() { os.Unsetenv(k) })
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	bcryptPW := "hashed-pw"
	bh, err := bcrypt.GenerateFromPassword([]byte(bcryptPW), bcrypt.MinCost)
	if err != nil {
		f.Fatal(err)
	}
	argonPW := "argon-pw"
	// Cheap argon2id parameters, as credentials_test.go takes them.
	params, _, err := caddyauth.DecodeHash([]byte("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
	if err != nil {
		f.Fatal(err)
	}
	ah, err := params.Hash([]byte(argonPW))
	if err != nil {
		f.Fatal(err)
	}

	return []fzCred{
		{
			name: "shop1", user: "K123456_abcd12345", pass: secrets["KSFZ_KLARNA_PW1"],
			cred: Credential{Name: "shop1", KlarnaUsername: "K123456_abcd12345",
				KlarnaPassword: "{env.KSFZ_KLARNA_PW1}", KustomAPIKey: "{env.KSFZ_KUSTOM_KEY}"},
			authorization: "Basic " + secrets["KSFZ_KUSTOM_KEY"],
		},
		{
			name: "shop2", user: "PK98765_fedcba98765", pass: secrets["KSFZ_KLARNA_PW2"],
			cred: Credential{Name: "shop2", KlarnaUsername: "PK98765_fedcba98765",
				KlarnaPassword: "{env.KSFZ_KLARNA_PW2}", KustomUsername: "PM0002-fuzz", KustomPassword: "{env.KSFZ_KUSTOM_PW}"},
			authorization: "Basic " + b64("PM0002-fuzz:"+secrets["KSFZ_KUSTOM_PW"]),
		},
		{
			name: "unicode", user: "K\u00fcnde_1", pass: secrets["KSFZ_KLARNA_PW3"],
			cred: Credential{Name: "unicode", KlarnaUsername: "K\u00fcnde_1",
				KlarnaPassword: "{env.KSFZ_KLARNA_PW3}", KustomUsername: "PM0003-fuzz", KustomAPIKey: "{env.KSFZ_LIVE_KEY}"},
			authorization: "Basic " + b64("PM0003-fuzz:"+secrets["KSFZ_LIVE_KEY"]),
		},
		{
			name: "spaced", user: " spaced user ", pass: secrets["KSFZ_KLARNA_PW1"],
			cred: Credential{Name: "spaced", KlarnaUsername: " spaced user ",
				KlarnaPassword: "{env.KSFZ_KLARNA_PW1}", KustomAPIKey: "{env.KSFZ_LIVE_KEY}"},
			authorization: "Basic " + secrets["KSFZ_LIVE_KEY"],
		},
		{
			name: "bcrypt", user: "K555_bcrypt", pass: bcryptPW, hash: "bcrypt",
			cred: Credential{Name: "bcrypt", KlarnaUsername: "K555_bcrypt",
				KlarnaPasswordHash: string(bh), KustomAPIKey: "{env.KSFZ_KUSTOM_KEY}"},
			authorization: "Basic " + secrets["KSFZ_KUSTOM_KEY"],
		},
		{
			name: "argon", user: "K666_argon", pass: argonPW, hash: "argon2id",
			cred: Credential{Name: "argon", KlarnaUsername: "K666_argon",
				KlarnaPasswordHash: string(ah), KustomUsername: "PM0006-fuzz", KustomPassword: "{env.KSFZ_KUSTOM_PW}"},
			authorization: "Basic " + b64("PM0006-fuzz:"+secrets["KSFZ_KUSTOM_PW"]),
		},
	}
}

// fzParseBasic is net/http's Basic parsing, written out: "Basic " matched
// ASCII case-insensitively, standard base64, split at the first ':'.
func fzParseBasic(h string) (user, pass string, ok bool) {
	const prefix = "Basic "
	if len(h) < len(prefix) {
		return "", "", false
	}
	for i := 0; i < len(prefix); i++ {
		if fzASCIILower(h[i]) != fzASCIILower(prefix[i]) {
			return "", "", false
		}
	}
	dec, err := base64.StdEncoding.DecodeString(h[len(prefix):])
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(dec), ":")
}

func fzASCIILower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

func (c fzCred) accepts(pass string) bool {
	// Exact equality for every credential: for bcrypt ones the shim refuses
	// NUL and passwords over 72 bytes, which bcrypt would otherwise read
	// as equivalent to a shorter one.
	return pass == c.pass
}

// fzExpectAuth is the outcome the model predicts for the Authorization
// values vals (nil: no header).
func fzExpectAuth(creds []fzCred, keep bool, vals []string) AuthOutcome {
	unknown := func(reason Reason) AuthOutcome {
		if keep {
			return AuthOutcome{Credential: UnknownCredential, Result: ResultKept}
		}
		return AuthOutcome{Credential: UnknownCredential, Result: ResultRejected, Refusal: reason}
	}
	if len(vals) == 0 {
		return unknown(ReasonMissingCredentials)
	}
	user, pass, ok := fzParseBasic(vals[0]) // only the first value counts, as in Header.Get
	if !ok {
		return unknown(ReasonMalformedAuthorization)
	}
	for _, c := range creds {
		if c.user != user {
			continue
		}
		if c.accepts(pass) {
			return AuthOutcome{Credential: c.name, Result: ResultSwapped, Authorization: c.authorization}
		}
		return AuthOutcome{Credential: c.name, Result: ResultRejected, Refusal: ReasonWrongPassword}
	}
	return unknown(ReasonUnknownUsername)
}

// FuzzBasicAuthorization: any Authorization header. mode selects how raw
// becomes the header: 0 raw as the value, 1 "Basic " + base64(raw) (so the
// fuzzer works on the decoded user:password), 2 no header at all, 3 raw
// followed by a second, valid header (which must not count).
func FuzzBasicAuthorization(f *testing.F) {
	creds := fzCredentials(f)
	configured := make([]Credential, len(creds))
	for i, c := range creds {
		configured[i] = c.cred
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	f.Cleanup(cancel)
	stores := map[bool]*CredentialStore{}
	for _, keep := range []bool{false, true} {
		policy := UnknownReject
		if keep {
			policy = UnknownKeep
		}
		s, _, err := NewCredentialStore(ctx, configured, policy)
		if err != nil {
			f.Fatalf("NewCredentialStore(%s): %v", policy, err)
		}
		stores[keep] = s
	}

	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, c := range creds {
		f.Add("Basic "+b64(c.user+":"+c.pass), uint8(0))
		f.Add(c.user+":"+c.pass, uint8(1))
		f.Add(c.user+":"+c.pass+"x", uint8(1))
		f.Add(c.user+":", uint8(1))
	}
	for _, s := range []string{
		"basic " + b64("K123456_abcd12345:klarna-pw-Fz81"),
		"BASIC " + b64("K123456_abcd12345:klarna-pw-Fz81"),
		"Basic  " + b64("K123456_abcd12345:klarna-pw-Fz81"),
		"Basic " + b64("K123456_abcd12345:klarna-pw-Fz81") + "\r\n",
		"Basic " + strings.TrimRight(b64("K123456_abcd12345:klarna-pw-Fz81"), "="),
		"Basic\t" + b64("K123456_abcd12345:klarna-pw-Fz81"),
		"Basic " + b64("K123456_abcd12345"),
		"Basic kco_test_api_fuzz-Key1",
		"Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
		"Basic ",
		"Basic",
		"",
		"Basic ====",
		"Basic " + b64(":"),
		"Basic " + b64("K555_bcrypt:hashed-pw\x00hashed-pw"),
		"Basic " + strings.Repeat("QUFB", 4096),
	} {
		f.Add(s, uint8(0))
	}
	f.Add("K555_bcrypt:hashed-pw\x00hashed-pw", uint8(1))
	f.Add("", uint8(2))
	f.Add("Bearer x", uint8(3))

	validSecond := "Basic " + b64(creds[0].user+":"+creds[0].pass)
	f.Fuzz(func(t *testing.T, raw string, mode uint8) {
		var vals []string
		switch mode % 4 {
		case 0:
			vals = []string{raw}
		case 1:
			vals = []string{"Basic " + b64(raw)}
		case 2:
		case 3:
			vals = []string{raw, validSecond}
		}
		for _, keep := range []bool{false, true} {
			r := &http.Request{
				Method: http.MethodPost,
				URL:    &url.URL{Path: "/checkout/v3/orders"},
				Host:   "localhost:8080",
				Header: http.Header{"Content-Type": {"application/json"}},
			}
			if vals != nil {
				r.Header["Authorization"] = append([]string(nil), vals...)
			}
			before := r.Header.Clone()

			got := decision(stores[keep].Authenticate(r))

			if !reflect.DeepEqual(r.Header, before) {
				t.Fatalf("keep=%v: Authenticate changed the request header:\nbefore %q\nafter  %q", keep, before, r.Header)
			}
			switch got.Result {
			case ResultSwapped, ResultKept, ResultRejected:
			default:
				t.Fatalf("keep=%v: result %q is not swapped, kept or rejected", keep, got.Result)
			}
			if (got.Result == ResultRejected) != (got.Refusal != "") {
				t.Fatalf("keep=%v: result %q with refusal %q", keep, got.Result, got.Refusal)
			}
			if (got.Result == ResultSwapped) != (got.Authorization != "") {
				t.Fatalf("keep=%v: result %q with an outgoing Authorization set=%v", keep, got.Result, got.Authorization != "")
			}
			if got.Result == ResultKept && !keep {
				t.Fatalf("credentials kept under unknown_credentials reject")
			}
			if got.Result == ResultSwapped {
				user, pass, ok := fzParseBasic(vals[0])
				var match *fzCred
				for i := range creds {
					if ok && creds[i].user == user && creds[i].accepts(pass) {
						match = &creds[i]
					}
				}
				if match == nil {
					t.Fatalf("keep=%v: swapped for %q, which is no configured username:password", keep, vals[0])
				}
				if got.Authorization != match.authorization || got.Credential != match.name {
					t.Fatalf("keep=%v: swapped as %q, want the configured Authorization of %q", keep, got.Credential, match.name)
				}
			}
			if want := fzExpectAuth(creds, keep, vals); got != want {
				t.Fatalf("keep=%v: Authenticate(%q) = %s/%s/%s, want %s/%s/%s", keep, vals,
					got.Credential, got.Result, got.Refusal, want.Credential, want.Result, want.Refusal)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzClassify

// fzCleanSegments: no "." or ".." segment and no empty segment except after
// a trailing slash, also once a ";…" path parameter is dropped (as Tomcat
// does); no "%" (a second decoding), no control character, valid UTF-8. By
// splitting rather than scanning.
func fzCleanSegments(path string) bool {
	if !strings.HasPrefix(path, "/") || !utf8.ValidString(path) || strings.Contains(path, "%") {
		return false
	}
	if strings.ContainsFunc(path, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return false
	}
	segs := strings.Split(path[1:], "/")
	for i, s := range segs {
		if s == "." || s == ".." || s == "" && i != len(segs)-1 {
			return false
		}
		if p := strings.Index(s, ";"); p >= 0 {
			if name := s[:p]; name == "" || name == "." || name == ".." {
				return false
			}
		}
	}
	return true
}

var fzDeprecatedPath = regexp.MustCompile(`^/ordermanagement/v1/orders/[^/]+/captures/[^/]+/(extend-due-date|extend-due-date-options|trigger-send-out)/?$`)

var fzDeprecatedMethod = map[string]string{
	EndpointExtendDueDate:        "PATCH",
	EndpointExtendDueDateOptions: "GET",
	EndpointTriggerSendOut:       "POST",
}

func FuzzClassify(f *testing.F) {
	for _, s := range []struct{ path, method string }{
		{"/checkout/v3/orders", "POST"},
		{"/checkout/v3/orders/0b1d9815-165e-42e2-8867-35bc03789e00", "GET"},
		{"/ordermanagement/v1/orders/o1/captures/c1/extend-due-date", "PATCH"},
		{"/ordermanagement/v1/orders/o1/captures/c1/extend-due-date-options/", "GET"},
		{"/ordermanagement/v1/orders/o1/captures/c1/trigger-send-out", "POST"},
		{"/ordermanagement/v1/orders/o1/captures/c1/trigger-send-out", "GET"},
		{"/ordermanagement/v1/orders//captures/c1/trigger-send-out", "POST"},
		{"/settlements/v1/payouts?size=10", "GET"},
		{"/hpp/v1/sessions", "POST"},
		{"/customer-token/v1/tokens/t1/order", "POST"},
		{"/payments/v1/sessions", "POST"},
		{"/checkout/v3/../../payments/v1/sessions", "POST"},
		{"/checkout/v3/./orders", "GET"},
		{"/checkout/v3//orders", "GET"},
		{"/checkout/v3/orders/..", "GET"},
		{"/checkout/v3/orders/.", "GET"},
		{"/checkout/v3/.../x", "GET"},
		{"/checkout/v3/..%2f..%2fpayments", "GET"},
		{"/checkout/v3", "GET"},
		{"/CHECKOUT/v3/orders", "GET"},
		{"/checkout/v3/\u00e9\u00e8", "GET"},
		{"/checkout/v3/\xff\xfe", "GET"},
		{"", ""},
		{"/checkout/v3/" + strings.Repeat("a/", 3000), "GET"},
		{"/checkout/v3/..;/..;/payments/v1/sessions", "POST"},
		{"/checkout/v3/orders/o1;v=1", "GET"},
		{"/checkout/v3/;x/orders", "GET"},
		{"/checkout/v3/%2e%2e/%2e%2e/payments/v1/sessions", "GET"},
		{"/checkout/v3/\xc0\xae\xc0\xae/payments", "GET"},
		{"/checkout/v3/..\x00/payments", "GET"},
	} {
		f.Add(s.path, s.method)
	}
	prefixOf := map[Service]string{}
	for _, p := range servicePrefixes {
		prefixOf[p.service] = p.prefix
	}
	f.Fuzz(func(t *testing.T, path, method string) {
		svc := Classify(path)
		if again := Classify(path); again != svc {
			t.Fatalf("Classify(%q) = %q, then %q", path, svc, again)
		}
		var want Service = Unmatched
		for _, s := range Services {
			p, ok := prefixOf[s]
			if !ok {
				t.Fatalf("service %q has no prefix", s)
			}
			if strings.HasPrefix(path, p) && fzCleanSegments(path) && !strings.Contains(path, `\`) {
				want = s
			}
		}
		if svc != Unmatched {
			p, known := prefixOf[svc]
			if !known {
				t.Fatalf("Classify(%q) = %q, not one of the six services", path, svc)
			}
			if !strings.HasPrefix(path, p) {
				t.Fatalf("Classify(%q) = %q without its prefix %q", path, svc, p)
			}
			for _, bad := range []string{"/../", "/./", "//"} {
				if strings.Contains(path, bad) {
					t.Fatalf("Classify(%q) = %q, but the path contains %q", path, svc, bad)
				}
			}
			if strings.HasSuffix(path, "/..") || strings.HasSuffix(path, "/.") {
				t.Fatalf("Classify(%q) = %q, but the path ends in a dot segment", path, svc)
			}
		}
		if svc != want {
			t.Fatalf("Classify(%q) = %q, want %q", path, svc, want)
		}

		name, ok := DeprecatedEndpoint(method, path)
		m := fzDeprecatedPath.FindStringSubmatch(path)
		wantOK := m != nil && fzDeprecatedMethod[m[1]] == method
		if ok != wantOK {
			t.Fatalf("DeprecatedEndpoint(%q, %q) = %q, %v; want %v", method, path, name, ok, wantOK)
		}
		if !ok {
			if name != "" {
				t.Fatalf("DeprecatedEndpoint(%q, %q) = %q, false", method, path, name)
			}
			return
		}
		if _, known := fzDeprecatedMethod[name]; !known {
			t.Fatalf("DeprecatedEndpoint(%q, %q) = %q, not one of the three", method, path, name)
		}
		if !strings.HasPrefix(path, "/ordermanagement/v1/orders/") || name != m[1] {
			t.Fatalf("DeprecatedEndpoint(%q, %q) = %q", method, path, name)
		}
		// DeprecatedEndpoint matches the shape only; the handler counts a call
		// only when Classify also says order_management, so a dot segment in
		// place of an id (orders/./captures/…) is never counted.
	})
}

// ---------------------------------------------------------------------------
// FuzzRewriteOrigin

var fzOriginPairs = [][2]string{
	{"https://api.kustom.co", "http://localhost:8080"},
	{"http://localhost:8080", "https://api.kustom.co"},
	{"https://api.klarna.com:443", "https://api.kustom.co"},
	{"https://api.kustom.co", "https://api.klarna.com:443"},
	{"https://api.playground.kustom.co", "https://API.Playground.Klarna.com"},
	{"http://localhost:80", "https://api.kustom.co"},
	{"https://api.kustom.co", ""}, // a request without Host: URLs become relative
	{"", "https://api.kustom.co"}, // ... and nothing is mistaken for its origin
}

// fzSplitURL splits u into scheme, authority and the rest (starting at the
// first '/', '?' or '#' after the authority), if u is scheme://….
func fzSplitURL(u string) (scheme, authority, rest string, ok bool) {
	scheme, after, ok := strings.Cut(u, "://")
	if !ok {
		return "", "", "", false
	}
	end := strings.IndexAny(after, "/?#")
	if end < 0 {
		end = len(after)
	}
	return scheme, after[:end], after[end:], true
}

func fzASCIILowerString(s string) string {
	b := []byte(s)
	for i := range b {
		b[i] = fzASCIILower(b[i])
	}
	return string(b)
}

// fzNormAuthority lowercases (ASCII only) and drops the scheme's default port.
func fzNormAuthority(scheme, authority string) string {
	a := fzASCIILowerString(authority)
	switch fzASCIILowerString(scheme) {
	case "https":
		return strings.TrimSuffix(a, ":443")
	case "http":
		return strings.TrimSuffix(a, ":80")
	}
	return a
}

func FuzzRewriteOrigin(f *testing.F) {
	// Each URL with one origin pair, in turn (the fuzzer varies the pair):
	// the cross product makes a baseline too slow for a short CI run.
	for i, u := range []string{
		"https://api.kustom.co/checkout/v3/orders/0b1d9815-165e-42e2-8867-35bc03789e00",
		"https://api.kustom.co:443/ordermanagement/v1/orders/o1/captures/c1",
		"HTTPS://API.KUSTOM.CO/settlements/v1/payouts?offset=20&size=20",
		"https://api.kustom.co",
		"https://api.kustom.co?x=1",
		"https://api.kustom.co#frag",
		"https://api.kustom.co.evil.example/x",
		"https://api.kustom.co@evil.example/x",
		"https://api.kustom.co:8443/x",
		"https://api.kustom.co//evil.example/x",
		"http://localhost:8080/hpp/v1/sessions/s1",
		"http://localhost:80800/x",
		"http://localhost/x",
		"https://api.klarna.com/checkout/v3/orders/1",
		"https://api.klarna.com:443/checkout/v3/orders/1",
		"https://api.klarna.com.:443/x",
		"/checkout/v3/orders/1",
		"",
		"https://api.\u212austom.co/x",
	} {
		f.Add(u, uint8(i%len(fzOriginPairs)))
	}
	f.Fuzz(func(t *testing.T, u string, pair uint8) {
		from, to := fzOriginPairs[int(pair)%len(fzOriginPairs)][0], fzOriginPairs[int(pair)%len(fzOriginPairs)][1]
		got, ok := RewriteOrigin(u, from, to)
		if !ok {
			if got != u {
				t.Fatalf("RewriteOrigin(%q, %q, %q) = %q, false: not u", u, from, to, got)
			}
		}

		// The model: same scheme and same authority (ASCII case-insensitive,
		// default port optional), and the rest starts the path, query or
		// fragment.
		fs, fa, _, fok := fzSplitURL(from)
		us, ua, rest, uok := fzSplitURL(u)
		want := fok && uok && fzASCIILowerString(us) == fzASCIILowerString(fs) &&
			fzNormAuthority(us, ua) == fzNormAuthority(fs, fa) &&
			// A relative "//x/…" would name another host: never produced.
			!(to == "" && strings.HasPrefix(rest, "//"))
		if want != ok {
			t.Fatalf("RewriteOrigin(%q, %q, %q) = %q, %v; want rewritten=%v", u, from, to, got, ok, want)
		}
		if !ok {
			return
		}

		if to == "" {
			wantRel := rest
			if !strings.HasPrefix(rest, "/") {
				wantRel = "/" + rest
			}
			if got != wantRel {
				t.Fatalf("RewriteOrigin(%q, %q, \"\") = %q, want %q", u, from, got, wantRel)
			}
			if ru, err := url.Parse(got); err == nil && (ru.Scheme != "" || ru.Host != "") {
				t.Fatalf("RewriteOrigin(%q, %q, \"\") = %q, not a path on the same origin", u, from, got)
			}
		} else {
			if !strings.HasPrefix(got, to) || got[len(to):] != rest {
				t.Fatalf("RewriteOrigin(%q, %q, %q) = %q, want %q + %q", u, from, to, got, to, rest)
			}
			back, bok := RewriteOrigin(got, to, from)
			if !bok || back != from+rest {
				t.Fatalf("RewriteOrigin back (%q, %q, %q) = %q, %v; want %q", got, to, from, back, bok, from+rest)
			}
		}

		// As net/url sees it, a rewritten URL was on from's host, and a URL
		// on any other host (api.kustom.co.evil.example) was left alone.
		fu, err := url.Parse(from)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", from, err)
		}
		if pu, err := url.Parse(u); err == nil {
			if !strings.EqualFold(pu.Hostname(), fu.Hostname()) || pu.User != nil || !strings.EqualFold(pu.Scheme, fu.Scheme) {
				t.Fatalf("RewriteOrigin(%q, %q, %q) rewrote a URL on host %q (user %v)", u, from, to, pu.Hostname(), pu.User)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzRewriteJSONFields

type fzFieldSet struct {
	fields bodyFields
	fn     func(string) (string, bool)
}

var fzFieldSets = []fzFieldSet{
	{hppSessionURLs, Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}.ToClient},
	{paginationURLs, Origins{Upstream: "https://api.kustom.co", Client: "https://api.klarna.com"}.ToClient},
	{bodyFields{{"payment_session_url"}}, Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}.ToUpstream},
	// Rewrites every string, so that the re-encoding runs whatever the value.
	{hppSessionURLs, func(s string) (string, bool) { return s + "\u2028<&>\"", true }},
	{paginationURLs, func(s string) (string, bool) { return s, true }}, // ok, but unchanged
}

// fzApply is the rewrite on the decoded tree: fn on the string at each path.
func fzApply(v any, fields bodyFields, fn func(string) (string, bool)) int {
	m, ok := v.(map[string]any)
	if !ok {
		return 0
	}
	changed := 0
	for _, path := range fields {
		cur := m
		for i, key := range path {
			val, present := cur[key]
			if !present {
				break
			}
			if i == len(path)-1 {
				if s, isString := val.(string); isString {
					if ns, ok := fn(s); ok && ns != s {
						cur[key] = ns
						changed++
					}
				}
				break
			}
			sub, isObject := val.(map[string]any)
			if !isObject {
				break
			}
			cur = sub
		}
	}
	return changed
}

func fzDecode(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

func FuzzRewriteJSONFields(f *testing.F) {
	// sel picks the field set and function (fzFieldSets): 0 HPP response,
	// 1 settlement pagination, 2 HPP request, 3 HPP with every string
	// rewritten, 4 pagination with fn returning ok but the same string.
	for _, s := range []struct {
		body string
		sel  uint8
	}{
		{`{"session_id":"s1","session_url":"https://api.kustom.co/hpp/v1/sessions/s1","distribution_url":"https://api.kustom.co/hpp/v1/sessions/s1/distribution","redirect_url":"https://pay.kustom.co/x"}`, 0},
		{`{"pagination":{"count":20,"total":1e400,"next":"https://api.kustom.co/settlements/v1/payouts?offset=20&size=20","prev":null},"payouts":[]}`, 1},
		{`{"payment_session_url":"http://localhost:8080/checkout/v3/orders/o1","merchant_urls":{"success":"https://shop.example/ok?sid={{session_id}}"}}`, 2},
		{` { "session_url" : "https://api.kustom.co/a\u0026b\/c" , "x" : [1, 2.50, -0, 1E-7] } `, 0},
		{` { "session_url" : "x\"y" , "x" : [1, 2.50, -0, 1E-7] } `, 3},
		{`{"session_url":"https://api.kustom.co/a","session_url":"https://api.kustom.co/b"}`, 0},
		{`{"pagination":{"next":"https://api.kustom.co/x"},"pagination":5}`, 1},
		{`{"pagination":{"next":"https://api.kustom.co/x","next":null}}`, 1},
		{`{"session_url":"\ud800"}`, 3},
		{"{\"session_url\":\"https://api.kustom.co/\xff\"}", 0},
		{`{"session_url":"https://api.kustom.co/x"} trailing`, 0},
		{`{"session_url":"https://api.kustom.co/x"}{}`, 0},
		{`["https://api.kustom.co/x"]`, 0},
		{`"https://api.kustom.co/x"`, 0},
		{`{"session_url":"https://api.kustom.co/x",}`, 0},
		{`{"session_url" "https://api.kustom.co/x"}`, 0},
		{`{"a":{"b":{"c":[[[[{}]]]]}},"session_url":12345678901234567890123456789}`, 3},
		{`{"pagination":{"next":"https://api.kustom.co/x"}}`, 4},
		{`{}`, 0},
		{``, 0},
		{`{"distribution_url":"https://API.KUSTOM.CO:443?a=<b>"}`, 0},
	} {
		f.Add([]byte(s.body), s.sel)
	}
	f.Fuzz(func(t *testing.T, body []byte, sel uint8) {
		set := fzFieldSets[int(sel)%len(fzFieldSets)]
		in := bytes.Clone(body)
		out, n, err := RewriteJSONFields(body, set.fields, set.fn)
		if !bytes.Equal(body, in) {
			t.Fatalf("RewriteJSONFields changed its input")
		}
		isObject := json.Valid(in) && bytes.TrimLeft(in, " \t\r\n")[0] == '{'
		if err != nil {
			if !bytes.Equal(out, in) || n != 0 {
				t.Fatalf("error %v with a changed body (n=%d):\n%q\n%q", err, n, in, out)
			}
			if isObject {
				t.Fatalf("a valid JSON object refused: %v\n%q", err, in)
			}
			return
		}
		if !isObject {
			t.Fatalf("accepted what is not a valid JSON object (n=%d):\n%q", n, in)
		}
		if n < 0 {
			t.Fatalf("n = %d", n)
		}
		want, derr := fzDecode(in)
		if derr != nil {
			t.Fatalf("decoding the input: %v", derr)
		}
		wantChanged := fzApply(want, set.fields, set.fn)
		if n == 0 {
			if !bytes.Equal(out, in) {
				t.Fatalf("n = 0 but the body changed:\n%q\n%q", in, out)
			}
			if wantChanged > 0 {
				t.Fatalf("n = 0 but %d field(s) should change:\n%q", wantChanged, in)
			}
			return
		}
		if !json.Valid(out) || bytes.TrimLeft(out, " \t\r\n")[0] != '{' {
			t.Fatalf("rewritten body is not a JSON object:\n%q\n%q", in, out)
		}
		got, derr := fzDecode(out)
		if derr != nil {
			t.Fatalf("decoding the output: %v", derr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("rewritten body differs from the input beyond the rewritten fields:\nin   %q\nout  %q\ngot  %#v\nwant %#v", in, out, got, want)
		}
	})
}

// ---------------------------------------------------------------------------
// FuzzHostMap

var fzForeignDomains = []string{"klarna.com", "kustom.co", "klarna.net"}

func FuzzHostMap(f *testing.F) {
	type hostMapCase struct {
		overrides     map[string]string
		defaultTarget string
		target        string // what the default target resolves to, or ""
	}
	cases := []hostMapCase{
		{nil, "", KustomProduction},
		{nil, TargetPlayground, KustomPlayground},
		{nil, TargetNone, ""},
		{map[string]string{"api.klarna.com": KustomPlayground, "Legacy.Example.": "kustom.internal.example", "klarna.com": "api.kustom.co"}, TargetProduction, KustomProduction},
	}
	maps := make([]*HostMap, len(cases))
	for i, c := range cases {
		hm, err := NewHostMap(c.overrides, c.defaultTarget)
		if err != nil {
			f.Fatalf("NewHostMap(%v, %q): %v", c.overrides, c.defaultTarget, err)
		}
		maps[i] = hm
	}
	for i, h := range []string{
		"api.klarna.com", "API.KLARNA.COM.", "api.klarna.com:443", "api-na.playground.klarna.com",
		"api.kustom.co", "api.playground.kustom.co:443", "legacy.example", "kustom.internal.example",
		"localhost:8080", "127.0.0.1:8080", "[::1]:8080", "[::1]", "::1",
		"pay.klarna.com", "js.kustom.co", "klarna.net", "evilklarna.com", "api.klarna.com.evil.example",
		"api.\u212alarna.com", "", ":", ".", "..", "api.klarna.com..", "api.klarna.com:",
		strings.Repeat("a.", 200) + "klarna.com",
	} {
		f.Add(h, uint8(i%len(cases)))
	}
	f.Fuzz(func(t *testing.T, host string, which uint8) {
		i := int(which) % len(maps)
		hm, target := maps[i], cases[i].target
		r, ok := hm.Resolve(host)
		if r2, ok2 := hm.Resolve(host); r2 != r || ok2 != ok {
			t.Fatalf("Resolve(%q) not deterministic", host)
		}
		fromHosts, toHosts := hm.FromHosts(), hm.ToHosts()
		in := func(list []string, s string) bool {
			for _, x := range list {
				if x == s {
					return true
				}
			}
			return false
		}
		if !ok {
			if r != (Route{}) {
				t.Fatalf("Resolve(%q) = %+v, false", host, r)
			}
		} else {
			if r.FromHost != LocalHost && !in(fromHosts, r.FromHost) {
				t.Fatalf("Resolve(%q).FromHost = %q, neither %q nor a host of the map", host, r.FromHost, LocalHost)
			}
			if !in(toHosts, r.ToHost) {
				t.Fatalf("Resolve(%q).ToHost = %q, not in ToHosts %q", host, r.ToHost, toHosts)
			}
		}

		// The model: a host of the map resolves to its own route; any other
		// goes to the default target unless it is under a Klarna or Kustom
		// domain.
		n := NormalizeHost(host)
		lr, lok := hm.Lookup(host)
		switch {
		case in(fromHosts, n):
			if !ok || !lok || r != lr || r.FromHost != n {
				t.Fatalf("Resolve(%q) = %+v, %v; Lookup = %+v, %v; want the map's route for %q", host, r, ok, lr, lok, n)
			}
		case lok:
			t.Fatalf("Lookup(%q) = %+v for a host not in FromHosts", host, lr)
		default:
			foreign := false
			for _, d := range fzForeignDomains {
				if n == d || strings.HasSuffix(n, "."+d) {
					foreign = true
				}
			}
			wantOK := target != "" && !foreign
			if ok != wantOK || ok && r != (Route{FromHost: LocalHost, ToHost: target}) {
				t.Fatalf("Resolve(%q) = %+v, %v; want %v to %q (foreign %v)", host, r, ok, wantOK, target, foreign)
			}
		}

		// Spellings of one name resolve alike: ASCII case, a default port,
		// a trailing dot.
		upper := []byte(host)
		for j, c := range upper {
			if 'a' <= c && c <= 'z' {
				upper[j] = c - ('a' - 'A')
			}
		}
		if r2, ok2 := hm.Resolve(string(upper)); r2 != r || ok2 != ok {
			t.Fatalf("Resolve(%q) = %+v, %v but Resolve(%q) = %+v, %v", host, r, ok, upper, r2, ok2)
		}
		if !strings.ContainsAny(host, ":[]") {
			if r2, ok2 := hm.Resolve(host + ":443"); r2 != r || ok2 != ok {
				t.Fatalf("Resolve(%q) = %+v, %v but with :443 %+v, %v", host, r, ok, r2, ok2)
			}
			if !strings.HasSuffix(host, ".") {
				if r2, ok2 := hm.Resolve(host + "."); r2 != r || ok2 != ok {
					t.Fatalf("Resolve(%q) = %+v, %v but with a trailing dot %+v, %v", host, r, ok, r2, ok2)
				}
			}
		}
	})
}
