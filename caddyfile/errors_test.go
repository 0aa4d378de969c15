package caddyfile_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

// Distinctive secret values: no error message may ever contain one.
const (
	literalSecret = "LITERAL-SECRET-123"
	envSecret     = "ENV-SECRET-456"
	otherSecret   = "OTHER-SECRET-789"
)

// A valid bcrypt hash (of "hiccup", Caddy's documentation example).
const bcryptHash = "$2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG"

// configErrorCase is one broken config and what its error must (and must
// never) say.
type configErrorCase struct {
	name string
	// site is the body of the `:8080 { … }` site block.
	site string
	// globals, if any, is the global options block before it.
	globals string
	// env is set with t.Setenv for the case.
	env map[string]string
	// want are substrings the error must contain: at least the field.
	want []string
	// secrets must not appear in the error. Every case implicitly also
	// checks literalSecret, envSecret and otherSecret.
	secrets []string
}

// kustomBlock is a site body with one kustom directive holding opts.
func kustomBlock(opts string) string {
	return "kustom {\n" + opts + "\n}"
}

// credential is a kustom block with one credential shop1 holding fields.
func credential(fields string) string {
	return kustomBlock("credential shop1 {\n" + fields + "\n}")
}

func siteCaddyfile(globals, body string) string {
	return globals + ":8080 {\n" + body + "\n}\n"
}

func checkError(t *testing.T, tc configErrorCase, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("config accepted; want an error containing %q", tc.want)
	}
	msg := err.Error()
	for _, w := range tc.want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not name %q:\n%s", w, msg)
		}
	}
	secrets := append([]string{literalSecret, envSecret, otherSecret}, tc.secrets...)
	if leaked, ok := shimtest.Contains(msg, secrets...); ok {
		t.Errorf("error leaks the secret %q:\n%s", leaked, msg)
	}
	t.Logf("error: %s", msg)
}

// TestAdaptErrors covers the mistakes the Caddyfile parser itself catches:
// syntax (argument counts, blocks, unknown or repeated options, values that
// do not parse or that the JSON cannot carry). What values mean is the
// module's to judge; TestLoadErrors covers what the parser used to judge.
func TestAdaptErrors(t *testing.T) {
	cases := []configErrorCase{
		{
			name: "intercept_connect with an argument",
			site: kustomBlock("intercept_connect yes"),
			want: []string{"intercept_connect"},
		},
		{
			name: "proxy_auth without a hash",
			site: kustomBlock("intercept_connect\nproxy_auth apps"),
			want: []string{"proxy_auth", "<username> <password-hash>"},
		},
		{
			// 0 in the JSON means no limit: the parser cannot hand it on.
			name: "max_concurrent zero",
			site: credential("klarna_username K1\nmax_concurrent 0"),
			want: []string{`credential "shop1"`, "max_concurrent", "no limit"},
		},
		{
			name: "max_concurrent not a number",
			site: credential("klarna_username K1\nmax_concurrent many"),
			want: []string{`credential "shop1"`, "max_concurrent", "many"},
		},
		{
			name: "max_concurrent twice",
			site: credential("klarna_username K1\nmax_concurrent 2\nmax_concurrent 3"),
			want: []string{`credential "shop1"`, "max_concurrent", "already"},
		},
		{
			name: "unknown subdirective",
			site: kustomBlock("frobnicate on"),
			want: []string{"kustom", `"frobnicate"`},
		},
		{
			name: "default_target without value",
			site: kustomBlock("default_target"),
			want: []string{"default_target"},
		},
		{
			name: "default_target with two values",
			site: kustomBlock("default_target production playground"),
			want: []string{"default_target"},
		},
		{
			name: "unmatched without an action",
			site: kustomBlock("unmatched"),
			want: []string{"unmatched", "wrong number of arguments", "passthrough <url>"},
		},
		{
			name: "unmatched with three arguments",
			site: kustomBlock("unmatched passthrough https://api.klarna.com extra"),
			want: []string{"unmatched", "wrong number of arguments", "passthrough <url>"},
		},
		{
			name: "max_request_body without value",
			site: kustomBlock("max_request_body"),
			want: []string{"max_request_body", "<size>"},
		},
		{
			name: "max_request_body that is not a size",
			site: kustomBlock("max_request_body lots"),
			want: []string{"max_request_body", "lots", "size"},
		},
		{
			name: "max_request_body 0",
			site: kustomBlock("max_request_body 0"),
			want: []string{"max_request_body", "out of range"},
		},
		{
			name: "duplicate max_request_body",
			site: kustomBlock("max_request_body 1MB\nmax_request_body 2MB"),
			want: []string{"max_request_body already specified"},
		},
		{
			name: "duplicate upstream",
			site: kustomBlock("upstream https://127.0.0.1:9443\nupstream https://127.0.0.1:9444"),
			want: []string{"upstream already specified"},
		},
		{
			name: "upstream with two values",
			site: kustomBlock("upstream https://127.0.0.1:9443 https://127.0.0.1:9444"),
			want: []string{"upstream"},
		},
		{
			name: "duplicate default_target",
			site: kustomBlock("default_target production\ndefault_target playground"),
			want: []string{"default_target already specified"},
		},
		{
			name: "duplicate unmatched",
			site: kustomBlock("unmatched reject\nunmatched passthrough https://api.klarna.com"),
			want: []string{"unmatched already specified"},
		},
		{
			name: "duplicate unknown_credentials",
			site: kustomBlock("unknown_credentials keep\nunknown_credentials reject"),
			want: []string{"unknown_credentials already specified"},
		},
		{
			name: "duplicate transport",
			site: kustomBlock("transport http {\ndial_timeout 5s\n}\ntransport http {\ndial_timeout 6s\n}"),
			want: []string{"transport already specified"},
		},
		{
			name: "transport that Caddy does not have",
			site: kustomBlock("transport frobnicate"),
			want: []string{"transport", "frobnicate"},
		},
		{
			name: "transport without protocol",
			site: kustomBlock("transport"),
			want: []string{"transport"},
		},
		{
			name: "transport http with an unknown option",
			site: kustomBlock("transport http {\nfrobnicate 5s\n}"),
			want: []string{"frobnicate"},
		},
		{
			name: "map with one argument",
			site: kustomBlock("map api.example.com"),
			want: []string{"map", "<from-host> <to-host>"},
		},
		{
			name: "map with three arguments",
			site: kustomBlock("map api.example.com api.kustom.co extra"),
			want: []string{"map", "<from-host> <to-host>"},
		},
		{
			name: "duplicate map from-host",
			site: kustomBlock("map api.example.com api.kustom.co\nmap api.example.com api.playground.kustom.co"),
			want: []string{"map", "api.example.com", "already mapped"},
		},
		{
			name: "credential without a name",
			site: kustomBlock("credential {\nklarna_username K1\n}"),
			want: []string{"credential", "expected a name"},
		},
		{
			name: "credential with two names",
			site: kustomBlock("credential shop1 shop2 {\nklarna_username K1\n}"),
			want: []string{"credential", "expected a name"},
		},
		{
			name: "unknown credential option",
			site: credential("klarna_username K1\nkustom_secret {env.X}"),
			want: []string{`credential "shop1"`, `"kustom_secret"`},
		},
		{
			name: "credential option given twice",
			site: credential("klarna_username K1\nkustom_api_key {env.X}\nkustom_api_key " + literalSecret),
			want: []string{`credential "shop1"`, "kustom_api_key already specified"},
		},
		{
			name: "klarna_password given twice",
			site: credential("klarna_username K1\nklarna_password " + literalSecret + "\nklarna_password " + otherSecret),
			want: []string{`credential "shop1"`, "klarna_password already specified"},
		},
		{
			name: "credential option with two values",
			site: credential("klarna_username K1\nkustom_api_key " + literalSecret + " extra"),
			want: []string{`credential "shop1"`, "kustom_api_key takes exactly one value"},
		},
		{
			name: "kustom_password with two values",
			site: credential("klarna_username K1\nkustom_username M1\nkustom_password " + otherSecret + " " + literalSecret),
			want: []string{`credential "shop1"`, "kustom_password takes exactly one value"},
		},
		{
			name: "credential option without value",
			site: credential("klarna_username K1\nklarna_password"),
			want: []string{`credential "shop1"`, "klarna_password takes exactly one value"},
		},
		{
			name: "kustom with an argument",
			site: "kustom production",
			want: []string{"kustom", "argument"},
		},
		{
			name:    "kustom_drain with an argument",
			globals: "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\tkustom_drain 5s\n\t\t}\n\t}\n}\n",
			site:    "kustom",
			want:    []string{"kustom_drain", "no arguments"},
		},
		{
			name:    "kustom_drain with a block",
			globals: "{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\tkustom_drain {\n\t\t\t\tlinger 5s\n\t\t\t}\n\t\t}\n\t}\n}\n",
			site:    "kustom",
			want:    []string{"kustom_drain", "no block"},
		},
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, _, err := adapter.Adapt([]byte(siteCaddyfile(tc.globals, tc.site)), nil)
			checkError(t, tc, err)
		})
	}
}

// TestLoadErrors covers the mistakes the Caddyfile parser used to refuse
// itself and now hands on: what a value means is judged once, by the module,
// for a Caddyfile as for a JSON config. Each case must adapt (so the message
// is the module's, not a parser copy of it) and then fail to load, as
// `kustom-shim run` or a reload would, with an error that names the field and
// holds no secret. Not parallel: a load changes Caddy's process-wide config.
func TestLoadErrors(t *testing.T) {
	const secrets = "klarna_password {env.KUSTOMSHIM_TEST_KLARNA_PASSWORD}\nkustom_api_key {env.KUSTOMSHIM_TEST_API_KEY}"
	cases := []configErrorCase{
		{
			name: "default_target mars",
			site: kustomBlock("default_target mars"),
			want: []string{"default_target", `"mars"`, "production, playground, none"},
		},
		{
			name: "unknown_credentials maybe",
			site: kustomBlock("unknown_credentials maybe"),
			want: []string{"unknown_credentials", `"maybe"`, "reject, keep"},
		},
		{
			name: "unmatched sideways",
			site: kustomBlock("unmatched sideways"),
			want: []string{"unmatched", `"sideways"`, "reject, passthrough"},
		},
		{
			name: "unmatched sideways with a URL",
			site: kustomBlock("unmatched sideways https://api.klarna.com"),
			want: []string{"unmatched", `"sideways"`, "reject, passthrough"},
		},
		{
			name: "unmatched passthrough without URL",
			site: kustomBlock("unmatched passthrough"),
			want: []string{"unmatched", "passthrough", "needs a URL"},
		},
		{
			name: "unmatched reject with URL",
			site: kustomBlock("unmatched reject https://api.klarna.com"),
			want: []string{"unmatched", "URL", "only with passthrough"},
		},
		{
			name: "transport fastcgi",
			site: kustomBlock("transport fastcgi"),
			want: []string{"transport", `"fastcgi"`, "only the http transport"},
		},
		{
			// The module normalises host names, so these are one host: which
			// line won would depend on Go's map order.
			name: "duplicate map from-host differing in case and trailing dot",
			site: kustomBlock("map api.example.com api.kustom.co\nmap API.Example.com. api.playground.kustom.co"),
			want: []string{"map", `"API.Example.com."`, `"api.example.com"`, "same host"},
		},
		{
			name: "duplicate credential name",
			site: kustomBlock(
				"credential shop1 {\nklarna_username K1\n" + secrets + "\n}\n" +
					"credential shop1 {\nklarna_username K2\n" + secrets + "\n}"),
			want: []string{`credential "shop1"`, "name", "used by another credential"},
		},
		{
			name: "missing klarna_username",
			site: credential(secrets),
			want: []string{`credential "shop1"`, "klarna_username", "required"},
		},
		{
			name: "negative max_concurrent",
			site: credential("klarna_username K1\n" + secrets + "\nmax_concurrent -1"),
			want: []string{`credential "shop1"`, "max_concurrent", "negative"},
		},
		{
			name:    "flush_interval under a second",
			globals: "kustom {\n\t\tflush_interval 500ms\n\t}",
			site:    kustomBlock(""),
			want:    []string{"flush_interval", "500ms", "too short", "at least 1s"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUSTOMSHIM_TEST_KLARNA_PASSWORD", otherSecret)
			t.Setenv("KUSTOMSHIM_TEST_API_KEY", envSecret)
			// Port 0: should a case ever load, it takes no real port.
			cf := shimtest.New(t).Globals(tc.globals) + ":0 {\n" + tc.site + "\n}\n"
			adapt(t, cf) // the parser must hand it on
			checkError(t, tc, shimtest.LoadError(t, cf))
		})
	}
}

// TestProvisionErrors covers the mistakes only the module can see: they adapt
// fine and fail when Caddy provisions the handler. Not parallel: provisioning
// touches Caddy's process-wide state (default storage, logs).
func TestProvisionErrors(t *testing.T) {
	const (
		apiKey   = "kustom_api_key {env.KUSTOMSHIM_TEST_API_KEY}"
		password = "klarna_password {env.KUSTOMSHIM_TEST_KLARNA_PASSWORD}"
	)
	setSecrets := map[string]string{
		"KUSTOMSHIM_TEST_API_KEY":         envSecret,
		"KUSTOMSHIM_TEST_KLARNA_PASSWORD": otherSecret,
		"KUSTOMSHIM_TEST_KUSTOM_PASSWORD": envSecret + "-kustom",
	}
	cases := []configErrorCase{
		{
			name: "proxy_auth without intercept_connect",
			site: kustomBlock("proxy_auth apps " + bcryptHash),
			want: []string{"proxy_auth", "intercept_connect"},
		},
		{
			name: "proxy_auth with a broken hash",
			site: kustomBlock("intercept_connect\nproxy_auth apps $2a$10$" + literalSecret),
			want: []string{"proxy_auth", "password_hash", "bcrypt"},
		},
		{
			name: "literal klarna_password",
			site: credential("klarna_username K1\nklarna_password " + literalSecret + "\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_password", "placeholder", "{env."},
		},
		{
			name: "literal kustom_password",
			site: credential("klarna_username K1\n" + password + "\nkustom_username M1\nkustom_password " + literalSecret),
			want: []string{`credential "shop1"`, "kustom_password", "placeholder"},
		},
		{
			name: "literal kustom_api_key",
			site: credential("klarna_username K1\n" + password + "\nkustom_api_key " + literalSecret),
			want: []string{`credential "shop1"`, "kustom_api_key", "placeholder"},
		},
		{
			name: "literal secret around a placeholder",
			site: credential("klarna_username K1\n" + password + "\nkustom_api_key " + literalSecret + "{env.KUSTOMSHIM_TEST_API_KEY}"),
			want: []string{`credential "shop1"`, "kustom_api_key", "placeholder"},
		},
		{
			// {$VAR} is expanded when the Caddyfile is adapted, so the secret
			// would sit in the JSON config: refused, and the hint says so.
			name: "adapt-time {$VAR} in kustom_api_key",
			site: credential("klarna_username K1\n" + password + "\nkustom_api_key {$KUSTOMSHIM_TEST_ADAPT_SECRET}"),
			env:  map[string]string{"KUSTOMSHIM_TEST_ADAPT_SECRET": literalSecret},
			want: []string{`credential "shop1"`, "kustom_api_key", "placeholder", "{$NAME}"},
		},
		{
			name: "empty env placeholder in kustom_api_key",
			site: credential("klarna_username K1\n" + password + "\nkustom_api_key {env.KUSTOMSHIM_TEST_UNSET_VAR}"),
			env:  map[string]string{"KUSTOMSHIM_TEST_UNSET_VAR": ""},
			want: []string{`credential "shop1"`, "kustom_api_key", "{env.KUSTOMSHIM_TEST_UNSET_VAR}", "empty"},
		},
		{
			name: "empty env placeholder in klarna_password",
			site: credential("klarna_username K1\nklarna_password {env.KUSTOMSHIM_TEST_UNSET_VAR}\n" + apiKey),
			env:  map[string]string{"KUSTOMSHIM_TEST_UNSET_VAR": ""},
			want: []string{`credential "shop1"`, "klarna_password", "{env.KUSTOMSHIM_TEST_UNSET_VAR}", "empty"},
		},
		{
			name: "missing file placeholder in klarna_password",
			site: credential("klarna_username K1\nklarna_password {file./nonexistent/kustom-shim-test-secret}\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_password", "{file./nonexistent/kustom-shim-test-secret}"},
		},
		{
			name: "empty env placeholder in klarna_username",
			site: credential("klarna_username {env.KUSTOMSHIM_TEST_UNSET_VAR}\n" + password + "\n" + apiKey),
			env:  map[string]string{"KUSTOMSHIM_TEST_UNSET_VAR": ""},
			want: []string{`credential "shop1"`, "klarna_username", "{env.KUSTOMSHIM_TEST_UNSET_VAR}"},
		},
		{
			name: "klarna_password and klarna_password_hash",
			site: credential("klarna_username K1\n" + password + "\nklarna_password_hash " + bcryptHash + "\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_password", "klarna_password_hash", "not both"},
		},
		{
			name: "kustom_password and kustom_api_key",
			site: credential("klarna_username K1\n" + password + "\nkustom_username M1\nkustom_password {env.KUSTOMSHIM_TEST_KUSTOM_PASSWORD}\n" + apiKey),
			want: []string{`credential "shop1"`, "kustom_password", "kustom_api_key", "not both"},
		},
		{
			name: "kustom_password without kustom_username",
			site: credential("klarna_username K1\n" + password + "\nkustom_password {env.KUSTOMSHIM_TEST_KUSTOM_PASSWORD}"),
			want: []string{`credential "shop1"`, "kustom_username", "required with kustom_password"},
		},
		{
			name: "neither kustom_password nor kustom_api_key",
			site: credential("klarna_username K1\n" + password + "\nkustom_username M1"),
			want: []string{`credential "shop1"`, "kustom_api_key", "required"},
		},
		{
			name: "no klarna password",
			site: credential("klarna_username K1\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_password", "required"},
		},
		{
			// The likeliest mistake: the plain password where the hash goes.
			name: "klarna_password_hash that is not a hash",
			site: credential("klarna_username K1\nklarna_password_hash " + literalSecret + "\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_password_hash", "bcrypt", "argon2id"},
		},
		{
			name: "klarna_password_hash that is not bcrypt or argon2id",
			site: credential("klarna_username K1\nklarna_password_hash $1$salt$" + literalSecret + "\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_password_hash", "bcrypt", "argon2id"},
		},
		{
			name: "invalid credential name",
			site: kustomBlock(`credential "bad name!" {` + "\nklarna_username K1\n" + password + "\n" + apiKey + "\n}"),
			want: []string{`credential "bad name!"`, "name"},
		},
		{
			name: "credential named unknown",
			site: kustomBlock("credential unknown {\nklarna_username K1\n" + password + "\n" + apiKey + "\n}"),
			want: []string{`credential "unknown"`, "name", "reserved"},
		},
		{
			name: "two credentials with the same klarna_username",
			site: kustomBlock(
				"credential shop1 {\nklarna_username K1\n" + password + "\n" + apiKey + "\n}\n" +
					"credential shop2 {\nklarna_username K1\n" + password + "\n" + apiKey + "\n}"),
			want: []string{`credential "shop2"`, "klarna_username", "used by another credential"},
		},
		{
			name: "kustom_api_key with a line break",
			site: credential("klarna_username K1\n" + password + "\nkustom_api_key {env.KUSTOMSHIM_TEST_CRLF_KEY}"),
			env:  map[string]string{"KUSTOMSHIM_TEST_CRLF_KEY": literalSecret + "\r\nX-Injected: " + otherSecret},
			want: []string{`credential "shop1"`, "kustom_api_key", "line break"},
		},
		{
			name: "klarna_username with a colon",
			site: credential("klarna_username K1:x\n" + password + "\n" + apiKey),
			want: []string{`credential "shop1"`, "klarna_username", "':'"},
		},
		{
			name: "map to a host with a scheme",
			site: kustomBlock("map api.klarna.com https://api.kustom.co"),
			want: []string{"map", "to-host", "https://api.kustom.co"},
		},
		{
			name: "map to a host with a path",
			site: kustomBlock("map api.klarna.com api.kustom.co/v1"),
			want: []string{"map", "to-host", "api.kustom.co/v1"},
		},
		{
			name: "map from a host with a scheme",
			site: kustomBlock("map https://api.example.com api.kustom.co"),
			want: []string{"map", "from-host", "https://api.example.com"},
		},
		{
			name: "map to a host with a port",
			site: kustomBlock("map api.klarna.com api.kustom.co:8443"),
			want: []string{"map", "to-host", "api.kustom.co:8443"},
		},
		{
			name: "upstream with credentials in the URL",
			site: kustomBlock("upstream https://user:" + literalSecret + "@127.0.0.1:9443"),
			want: []string{"upstream"},
		},
		{
			name: "cleartext upstream with credentials in the URL",
			site: kustomBlock("upstream http://user:" + literalSecret + "@127.0.0.1:1"),
			want: []string{"upstream", "https"},
		},
		{
			name: "unmatched passthrough with credentials in the URL",
			site: kustomBlock("unmatched passthrough https://user:" + literalSecret + "@api.klarna.com"),
			want: []string{"unmatched", "passthrough"},
		},
		{
			name: "unmatched passthrough ftp with credentials in the URL",
			site: kustomBlock("unmatched passthrough ftp://user:" + literalSecret + "@x"),
			want: []string{"unmatched", "passthrough"},
		},
		{
			name: "cleartext upstream",
			site: kustomBlock("upstream http://127.0.0.1:1"),
			want: []string{"upstream", "http://127.0.0.1:1", "https"},
		},
		{
			name: "upstream with a path",
			site: kustomBlock("upstream https://127.0.0.1:9443/v1"),
			want: []string{"upstream", "path"},
		},
		{
			name: "upstream that is neither a URL nor host:port",
			site: kustomBlock("upstream 127.0.0.1"),
			want: []string{"upstream", "host:port"},
		},
		{
			name: "unmatched passthrough ftp",
			site: kustomBlock("unmatched passthrough ftp://x"),
			want: []string{"unmatched", "passthrough", "ftp://x", "http(s)"},
		},
		{
			name: "unmatched passthrough with a path",
			site: kustomBlock("unmatched passthrough https://api.klarna.com/payments"),
			want: []string{"unmatched", "passthrough", "path"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range setSecrets {
				t.Setenv(k, v)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := validate(t, siteCaddyfile(shimtest.New(t).Globals(""), tc.site))
			checkError(t, tc, err)
		})
	}
}

// TestProvisionErrorsJSON covers mistakes a Caddyfile cannot even write but
// a JSON config (or one changed through the admin API) can make: the module
// must refuse them too. Values both can write go through the module the
// same way and are covered from the Caddyfile by TestLoadErrors.
func TestProvisionErrorsJSON(t *testing.T) {
	cases := []struct {
		configErrorCase
		handler map[string]any // merged into the kustom handler's JSON
	}{
		{
			configErrorCase: configErrorCase{
				name: "negative max_request_body",
				want: []string{"max_request_body"},
			},
			handler: map[string]any{"max_request_body": -1},
		},
		{
			configErrorCase: configErrorCase{
				name: "credential without a name",
				want: []string{"credential 0", "name"},
			},
			handler: map[string]any{"credentials": []any{map[string]any{
				"klarna_username": "K1",
				"klarna_password": "{env.KUSTOMSHIM_TEST_KLARNA_PASSWORD}",
				"kustom_api_key":  "{env.KUSTOMSHIM_TEST_API_KEY}",
			}}},
		},
		{
			configErrorCase: configErrorCase{
				name: "misspelt credential field holding a secret",
				want: []string{"kustom_apikey"},
			},
			handler: map[string]any{"credentials": []any{map[string]any{
				"name":            "shop1",
				"klarna_username": "K1",
				"klarna_password": "{env.KUSTOMSHIM_TEST_KLARNA_PASSWORD}",
				"kustom_apikey":   literalSecret,
			}}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUSTOMSHIM_TEST_KLARNA_PASSWORD", otherSecret)
			t.Setenv("KUSTOMSHIM_TEST_API_KEY", envSecret)
			var raw map[string]any
			if err := json.Unmarshal(adapt(t, siteCaddyfile(shimtest.New(t).Globals(""), "kustom")), &raw); err != nil {
				t.Fatal(err)
			}
			h := kustomHandler(t, raw)
			for k, v := range tc.handler {
				h[k] = v
			}
			out, err := json.Marshal(raw)
			if err != nil {
				t.Fatal(err)
			}
			var cfg caddy.Config
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatalf("decoding config: %v", err)
			}
			checkError(t, tc.configErrorCase, caddy.Validate(&cfg))
		})
	}
}

// kustomHandler finds the (only) kustom handler object in an adapted config.
func kustomHandler(t *testing.T, cfg map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "kustom" {
				found = v
				return
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(cfg)
	if found == nil {
		t.Fatal("no kustom handler in the adapted config")
	}
	return found
}

// TestValidConfigProvisions is the control for TestProvisionErrors: a config
// using every option, with its placeholders set, provisions cleanly, so the
// failures above come from the mistake each case makes and not from the
// surroundings.
func TestValidConfigProvisions(t *testing.T) {
	t.Setenv("KUSTOMSHIM_TEST_KLARNA_PASSWORD", otherSecret)
	t.Setenv("KUSTOMSHIM_TEST_API_KEY", envSecret)
	t.Setenv("KUSTOMSHIM_TEST_KUSTOM_PASSWORD", envSecret+"-kustom")
	site := kustomBlock(`default_target playground
map api-eu.example.com api.kustom.co
unmatched passthrough https://api.klarna.com
unknown_credentials keep
max_request_body 2MiB
upstream https://127.0.0.1:9443
transport http {
	dial_timeout 5s
	response_header_timeout 30s
	keepalive 90s
}
credential shop1 {
	klarna_username K123456_abcd12345
	klarna_password {env.KUSTOMSHIM_TEST_KLARNA_PASSWORD}
	kustom_api_key {env.KUSTOMSHIM_TEST_API_KEY}
}
credential shop2 {
	klarna_username K654321_efgh67890
	klarna_password {env.KUSTOMSHIM_TEST_KLARNA_PASSWORD}
	kustom_username M654321_kustom2
	kustom_password {env.KUSTOMSHIM_TEST_KUSTOM_PASSWORD}
}
credential shop3 {
	klarna_username PK98765_ijkl13579
	klarna_password_hash ` + bcryptHash + `
	kustom_api_key {env.KUSTOMSHIM_TEST_API_KEY}
}`)
	if err := validate(t, siteCaddyfile(shimtest.New(t).Globals(""), site)); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

// validate adapts caddyfile, which must succeed, and provisions the result
// without starting it.
func validate(t *testing.T, caddyfile string) error {
	t.Helper()
	out := adapt(t, caddyfile)
	var cfg caddy.Config
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("decoding adapted config: %v", err)
	}
	return caddy.Validate(&cfg)
}

// adapt turns caddyfile into JSON; it must adapt.
func adapt(t *testing.T, caddyfile string) []byte {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v\n%s", err, caddyfile)
	}
	return out
}
