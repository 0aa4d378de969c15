package module

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/bcrypt"
)

// Distinctive secrets: none of them may ever show up in an error message.
const (
	ctKlarnaUser    = "K123456_abcd12345"
	ctKlarnaPW      = "klarna-pw-Zq81-unit"
	ctKustomKey     = "kco_test_api_key-Xv42-unit"
	ctKustomLiveKey = "kco_live_api_key-Lv64-unit"
	ctKustomUser    = "PM0001-abcd"
	ctKustomPW      = "kustom-pw-Wm77-unit"
	ctHashedPW      = "klarna-hashed-pw-Hb33-unit"
	ctSecretInName  = "secret-Qq55-in-username"
)

func testContext(t testing.TB) caddy.Context {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

func setSecrets(t testing.TB) {
	t.Helper()
	t.Setenv("KSUT_KLARNA_PW", ctKlarnaPW)
	t.Setenv("KSUT_KUSTOM_KEY", ctKustomKey)
	t.Setenv("KSUT_KUSTOM_PW", ctKustomPW)
	t.Setenv("KSUT_KUSTOM_LIVE_KEY", ctKustomLiveKey)
}

func newStore(t testing.TB, creds []Credential, unknown string) (*CredentialStore, []ResolvedCredential) {
	t.Helper()
	s, resolved, err := NewCredentialStore(testContext(t), creds, unknown)
	if err != nil {
		t.Fatalf("NewCredentialStore: %v", err)
	}
	return s, resolved
}

func basicHeader(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// authRequest is a request with the given Authorization values (none for nil).
func authRequest(auth ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "http://localhost:8080/checkout/v3/orders", nil)
	if len(auth) > 0 {
		r.Header["Authorization"] = auth
	}
	return r
}

func argon2idHash(t testing.TB, password string) string {
	t.Helper()
	// Argon2idHash{} has zero parameters (Hash panics on them); take cheap
	// ones from a PHC string instead of `caddy hash-password`'s 46 MiB.
	params, _, err := caddyauth.DecodeHash([]byte("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := params.Hash([]byte(password))
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func bcryptHash(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// TestAuthenticateSwapsCredentials: the right Klarna password gets exactly
// the Authorization Kustom documents for each form of Kustom credential.
func TestAuthenticateSwapsCredentials(t *testing.T) {
	setSecrets(t)
	s, resolved := newStore(t, []Credential{
		{Name: "key-alone", KlarnaUsername: "K1_key", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "user-pass", KlarnaUsername: "K2_pass", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomUsername: ctKustomUser, KustomPassword: "{env.KSUT_KUSTOM_PW}"},
		{Name: "user-key", KlarnaUsername: "K3_userkey", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomUsername: ctKustomUser, KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "live-key", KlarnaUsername: "K4_live", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_LIVE_KEY}"},
		{Name: "odd-key", KlarnaUsername: "K5_odd", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_PW}"},
	}, "")
	cases := []struct {
		user, name, wantAuth, wantEnv string
	}{
		{"K1_key", "key-alone", "Basic " + ctKustomKey, TargetPlayground},
		{"K2_pass", "user-pass", "Basic " + base64.StdEncoding.EncodeToString([]byte(ctKustomUser+":"+ctKustomPW)), ""},
		{"K3_userkey", "user-key", "Basic " + base64.StdEncoding.EncodeToString([]byte(ctKustomUser+":"+ctKustomKey)), TargetPlayground},
		{"K4_live", "live-key", "Basic " + ctKustomLiveKey, TargetProduction},
		{"K5_odd", "odd-key", "Basic " + ctKustomPW, ""},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := basicHeader(c.user, ctKlarnaPW)
			r := authRequest(in)
			got := decision(s.Authenticate(r))
			want := AuthOutcome{Credential: c.name, Result: ResultSwapped, Authorization: c.wantAuth}
			if got != want {
				t.Errorf("Authenticate = %+v, want %+v", got, want)
			}
			if h := r.Header["Authorization"]; len(h) != 1 || h[0] != in {
				t.Errorf("Authenticate changed the request's Authorization to %q", h)
			}
			rc := resolved[i]
			if rc.Name != c.name || rc.Authorization != c.wantAuth || rc.Environment != c.wantEnv {
				t.Errorf("resolved[%d] = {%s %s %q}, want {%s <same Authorization> %q}", i, rc.Name, rc.Authorization, rc.Environment, c.name, c.wantEnv)
			}
		})
	}
	if len(resolved) != len(cases) {
		t.Errorf("resolved %d credentials, want %d", len(resolved), len(cases))
	}
}

// TestAuthenticateRefusals: what happens to callers that are not a
// configured Klarna key, under both unknown_credentials policies.
func TestAuthenticateRefusals(t *testing.T) {
	setSecrets(t)
	creds := []Credential{
		{Name: "shop1", KlarnaUsername: ctKlarnaUser, KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "shop2", KlarnaUsername: "K2_other", KlarnaPassword: "{env.KSUT_KUSTOM_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
	}
	cases := []struct {
		name string
		auth []string // nil: no header
		// Under reject; under keep everything but a wrong password is kept.
		cred   string
		reason Reason
	}{
		{"wrong password", []string{basicHeader(ctKlarnaUser, "not-the-password")}, "shop1", ReasonWrongPassword},
		{"empty password", []string{basicHeader(ctKlarnaUser, "")}, "shop1", ReasonWrongPassword},
		{"password of another credential", []string{basicHeader(ctKlarnaUser, ctKustomPW)}, "shop1", ReasonWrongPassword},
		{"password with extra byte", []string{basicHeader(ctKlarnaUser, ctKlarnaPW+"x")}, "shop1", ReasonWrongPassword},
		{"unknown username", []string{basicHeader("K999_nobody", ctKlarnaPW)}, UnknownCredential, ReasonUnknownUsername},
		{"username in other case", []string{basicHeader(strings.ToLower(ctKlarnaUser), ctKlarnaPW)}, UnknownCredential, ReasonUnknownUsername},
		{"kustom username", []string{basicHeader(ctKustomUser, ctKustomKey)}, UnknownCredential, ReasonUnknownUsername},
		{"no header", nil, UnknownCredential, ReasonMissingCredentials},
		{"empty header", []string{""}, UnknownCredential, ReasonMalformedAuthorization},
		{"not base64", []string{"Basic !!not-base64!!"}, UnknownCredential, ReasonMalformedAuthorization},
		{"bearer", []string{"Bearer " + ctKlarnaPW}, UnknownCredential, ReasonMalformedAuthorization},
		{"base64 without colon", []string{"Basic " + base64.StdEncoding.EncodeToString([]byte(ctKlarnaUser+ctKlarnaPW))}, UnknownCredential, ReasonMalformedAuthorization},
		{"Kustom key alone", []string{"Basic " + ctKustomKey}, UnknownCredential, ReasonMalformedAuthorization},
		{"scheme only", []string{"Basic"}, UnknownCredential, ReasonMalformedAuthorization},
	}
	for _, policy := range []string{"", UnknownReject, UnknownKeep} {
		s, _ := newStore(t, creds, policy)
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/%s", policy, c.name), func(t *testing.T) {
				want := AuthOutcome{Credential: c.cred, Result: ResultRejected, Refusal: c.reason}
				if policy == UnknownKeep && c.reason != ReasonWrongPassword {
					want = AuthOutcome{Credential: UnknownCredential, Result: ResultKept}
				}
				if got := decision(s.Authenticate(authRequest(c.auth...))); got != want {
					t.Errorf("Authenticate = %+v, want %+v", got, want)
				}
			})
		}
	}
}

// longPW is a 102-byte password: past bcrypt's 72.
var longPW = strings.Repeat("long-password-", 7) + "tail"

// TestAuthenticateHashedPasswords: bcrypt and argon2id hashes, as `caddy
// hash-password` prints them, accept the right password and only it, in a
// store that mixes them with plaintext credentials.
func TestAuthenticateHashedPasswords(t *testing.T) {
	setSecrets(t)
	s, _ := newStore(t, []Credential{
		{Name: "plain", KlarnaUsername: "K1_plain", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "bcrypt", KlarnaUsername: "K2_bcrypt", KlarnaPasswordHash: bcryptHash(t, ctHashedPW), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "bcrypt2", KlarnaUsername: "K3_bcrypt", KlarnaPasswordHash: bcryptHash(t, ctHashedPW+"2"), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "argon", KlarnaUsername: "K4_argon", KlarnaPasswordHash: argon2idHash(t, ctHashedPW), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		// argon2id reads the whole password: one over bcrypt's 72 bytes
		// is checked, not refused unseen.
		{Name: "argonlong", KlarnaUsername: "K5_argon", KlarnaPasswordHash: argon2idHash(t, longPW), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "bcryptlong", KlarnaUsername: "K6_bcrypt", KlarnaPasswordHash: bcryptHash(t, longPW[:72]), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
	}, UnknownKeep)
	swapped := func(name string) AuthOutcome {
		return AuthOutcome{Credential: name, Result: ResultSwapped, Authorization: "Basic " + ctKustomKey}
	}
	wrong := func(name string) AuthOutcome {
		return AuthOutcome{Credential: name, Result: ResultRejected, Refusal: ReasonWrongPassword}
	}
	cases := []struct {
		name, user, pass string
		want             AuthOutcome
	}{
		{"bcrypt right", "K2_bcrypt", ctHashedPW, swapped("bcrypt")},
		{"bcrypt wrong", "K2_bcrypt", "wrong", wrong("bcrypt")},
		{"bcrypt right again (cached)", "K2_bcrypt", ctHashedPW, swapped("bcrypt")},
		{"bcrypt wrong again (cached)", "K2_bcrypt", "wrong", wrong("bcrypt")},
		{"bcrypt other account's password", "K2_bcrypt", ctHashedPW + "2", wrong("bcrypt")},
		{"bcrypt second account", "K3_bcrypt", ctHashedPW + "2", swapped("bcrypt2")},
		{"bcrypt second account, first's password", "K3_bcrypt", ctHashedPW, wrong("bcrypt2")},
		{"bcrypt empty password", "K2_bcrypt", "", wrong("bcrypt")},
		{"argon2id right", "K4_argon", ctHashedPW, swapped("argon")},
		{"argon2id wrong", "K4_argon", ctHashedPW + " ", wrong("argon")},
		{"argon2id right again (cached)", "K4_argon", ctHashedPW, swapped("argon")},
		{"argon2id, 102 bytes, right", "K5_argon", longPW, swapped("argonlong")},
		{"argon2id, 102 bytes, one byte off at the end", "K5_argon", longPW[:101] + "!", wrong("argonlong")},
		{"bcrypt refuses more than its 72 bytes", "K6_bcrypt", longPW, wrong("bcryptlong")},
		{"bcrypt, its 72 bytes", "K6_bcrypt", longPW[:72], swapped("bcryptlong")},
		{"plaintext next to hashes", "K1_plain", ctKlarnaPW, swapped("plain")},
		{"plaintext wrong", "K1_plain", ctHashedPW, wrong("plain")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := decision(s.Authenticate(authRequest(basicHeader(c.user, c.pass)))); got != c.want {
				t.Errorf("Authenticate(%s) = %+v, want %+v", c.user, got, c.want)
			}
		})
	}
}

// TestAuthenticateManyCredentials: one gateway serving 10 000 stores still
// finds each caller's own credential and no other.
func TestAuthenticateManyCredentials(t *testing.T) {
	const n = 10000
	creds := manyCredentials(t, n)
	s, resolved := newStore(t, creds, "")
	if len(resolved) != n {
		t.Fatalf("resolved %d credentials, want %d", len(resolved), n)
	}
	for _, i := range []int{0, 1, 2, 96, 97, 777, n / 2, n - 2, n - 1} {
		want := AuthOutcome{Credential: fmt.Sprintf("store-%d", i), Result: ResultSwapped,
			Authorization: basicHeader(fmt.Sprintf("M%d-kustom", i), "kco_test_api_key")}
		if got := decision(s.Authenticate(authRequest(basicHeader(fmt.Sprintf("K%d_klarna", i), manyPassword(i))))); got != want {
			t.Errorf("store %d: Authenticate = %+v, want %+v", i, got, want)
		}
		if resolved[i].Name != want.Credential || resolved[i].Authorization != want.Authorization {
			t.Errorf("resolved[%d] = %+v, want %s", i, resolved[i], want.Credential)
		}
		// A neighbour's password is not this store's.
		j := (i + 1) % n
		got := decision(s.Authenticate(authRequest(basicHeader(fmt.Sprintf("K%d_klarna", i), manyPassword(j)))))
		if got.Result != ResultRejected || got.Refusal != ReasonWrongPassword || got.Credential != want.Credential {
			t.Errorf("store %d with store %d's password: %+v, want rejected wrong_password", i, j, got)
		}
	}
	if got := s.Authenticate(authRequest(basicHeader(fmt.Sprintf("K%d_klarna", n), "pw-0"))); got.Refusal != ReasonUnknownUsername {
		t.Errorf("username past the last store: %+v, want unknown_username", got)
	}
}

// manyCredentials configures n stores. Each has its own Klarna username and
// Kustom username (so its own outgoing Authorization); Klarna passwords come
// from manyPasswords environment variables, as many variables would make
// every Setenv slow (libc setenv copies the environment).
func manyCredentials(t testing.TB, n int) []Credential {
	t.Helper()
	t.Setenv("KSUT_MANY_KEY", "kco_test_api_key")
	for i := 0; i < manyPasswords && i < n; i++ {
		t.Setenv(fmt.Sprintf("KSUT_MANY_PW_%d", i), manyPassword(i))
	}
	creds := make([]Credential, n)
	for i := range creds {
		creds[i] = Credential{
			Name:           fmt.Sprintf("store-%d", i),
			KlarnaUsername: fmt.Sprintf("K%d_klarna", i),
			KlarnaPassword: fmt.Sprintf("{env.KSUT_MANY_PW_%d}", i%manyPasswords),
			KustomUsername: fmt.Sprintf("M%d-kustom", i),
			KustomAPIKey:   "{env.KSUT_MANY_KEY}",
		}
	}
	return creds
}

const manyPasswords = 97

func manyPassword(i int) string { return fmt.Sprintf("pw-%d", i%manyPasswords) }

// TestCredentialFilePlaceholder: a secret in a file (a Docker or Kubernetes
// secret, written with a trailing newline) is read without the newline.
func TestCredentialFilePlaceholder(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "kustom_api_key")
	pwFile := filepath.Join(dir, "klarna_password")
	kpwFile := filepath.Join(dir, "kustom_password")
	for f, v := range map[string]string{keyFile: ctKustomKey + "\n", pwFile: ctKlarnaPW + "\n", kpwFile: ctKustomPW + "\r\n"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, resolved := newStore(t, []Credential{
		{Name: "file-key", KlarnaUsername: "K1_file", KlarnaPassword: "{file." + pwFile + "}", KustomAPIKey: "{file." + keyFile + "}"},
		{Name: "file-pw", KlarnaUsername: "K2_file", KlarnaPassword: "{file." + pwFile + "}", KustomUsername: ctKustomUser, KustomPassword: "{file." + kpwFile + "}"},
	}, "")
	if want := "Basic " + ctKustomKey; resolved[0].Authorization != want {
		t.Errorf("Authorization from {file.…} = %q, want %q (no newline)", resolved[0].Authorization, want)
	}
	if want := basicHeader(ctKustomUser, ctKustomPW); resolved[1].Authorization != want {
		t.Errorf("Authorization from {file.…} with CRLF = %q, want %q", resolved[1].Authorization, want)
	}
	if got := s.Authenticate(authRequest(basicHeader("K1_file", ctKlarnaPW))); got.Result != ResultSwapped {
		t.Errorf("password from {file.…}: %+v, want swapped (newline must not be part of the password)", got)
	}
	if got := s.Authenticate(authRequest(basicHeader("K1_file", ctKlarnaPW+"\n"))); got.Result != ResultRejected {
		t.Errorf("password with the file's newline: %+v, want rejected", got)
	}
}

// TestCredentialStoreConfigErrors: every configuration mistake is refused
// with a message naming the credential and the field, and never the secret.
func TestCredentialStoreConfigErrors(t *testing.T) {
	setSecrets(t)
	t.Setenv("KSUT_EMPTY", "")
	t.Setenv("KSUT_USER_COLON", "K1:"+ctSecretInName)
	t.Setenv("KSUT_KEY_CRLF", "kco_test_api_crlf-Ee19\r\nX-Injected: yes")
	t.Setenv("KSUT_KEY_LF", "kco_test_api_lf-Ff28\n")
	secrets := []string{ctKlarnaPW, ctKustomKey, ctKustomPW, ctSecretInName, "crlf-Ee19", "lf-Ff28",
		"literal-Lt11", "hash-literal-Hl22", "Gg37"}

	const (
		pw  = "{env.KSUT_KLARNA_PW}"
		key = "{env.KSUT_KUSTOM_KEY}"
		kpw = "{env.KSUT_KUSTOM_PW}"
	)
	good := func(name, user string) Credential {
		return Credential{Name: name, KlarnaUsername: user, KlarnaPassword: pw, KustomAPIKey: key}
	}
	with := func(f func(*Credential)) []Credential {
		c := good("shop1", ctKlarnaUser)
		f(&c)
		return []Credential{c}
	}
	cases := []struct {
		name    string
		creds   []Credential
		unknown string
		wantIn  []string
	}{
		{"unknown_credentials", []Credential{good("shop1", ctKlarnaUser)}, "drop", []string{"unknown_credentials", "drop"}},
		{"unknown_credentials case", nil, "Keep", []string{"unknown_credentials"}},
		{"no name", with(func(c *Credential) { c.Name = "" }), "", []string{"credential 0", "name"}},
		{"name with space", with(func(c *Credential) { c.Name = "shop 1" }), "", []string{`credential "shop 1"`, "name"}},
		{"name with slash", with(func(c *Credential) { c.Name = "shop/1" }), "", []string{`credential "shop/1"`, "name"}},
		{"name starting with dot", with(func(c *Credential) { c.Name = ".shop" }), "", []string{"name"}},
		{"name too long", with(func(c *Credential) { c.Name = strings.Repeat("s", 65) }), "", []string{"name", "64"}},
		{"name reserved", with(func(c *Credential) { c.Name = UnknownCredential }), "", []string{`credential "unknown"`, "name", "reserved"}},
		{"duplicate name", []Credential{good("shop1", "K1"), good("shop1", "K2")}, "", []string{`credential "shop1"`, "name", "another"}},
		{"error in second credential", []Credential{good("shop1", "K1"), {Name: "shop2", KlarnaUsername: "K2", KlarnaPassword: pw}}, "", []string{`credential "shop2"`, "kustom_api_key", "required"}},
		{"no klarna_username", with(func(c *Credential) { c.KlarnaUsername = "" }), "", []string{`credential "shop1"`, "klarna_username", "required"}},
		{"klarna_username with colon", with(func(c *Credential) { c.KlarnaUsername = "{env.KSUT_USER_COLON}" }), "", []string{`credential "shop1"`, "klarna_username", "':'"}},
		{"klarna_username empty placeholder", with(func(c *Credential) { c.KlarnaUsername = "{env.KSUT_EMPTY}" }), "", []string{`credential "shop1"`, "klarna_username", "KSUT_EMPTY"}},
		{"klarna_username unknown placeholder", with(func(c *Credential) { c.KlarnaUsername = "{nope.x}" }), "", []string{`credential "shop1"`, "klarna_username"}},
		{"duplicate klarna_username", []Credential{good("shop1", ctKlarnaUser), good("shop2", ctKlarnaUser)}, "", []string{`credential "shop2"`, "klarna_username", "another"}},
		{"password and hash", with(func(c *Credential) { c.KlarnaPasswordHash = bcryptHash(t, "x") }), "", []string{`credential "shop1"`, "klarna_password", "klarna_password_hash"}},
		{"no klarna_password", with(func(c *Credential) { c.KlarnaPassword = "" }), "", []string{`credential "shop1"`, "klarna_password", "required"}},
		{"literal klarna_password", with(func(c *Credential) { c.KlarnaPassword = "literal-Lt11" }), "", []string{`credential "shop1"`, "klarna_password", "placeholder"}},
		{"klarna_password placeholder with suffix", with(func(c *Credential) { c.KlarnaPassword = "{env.KSUT_KLARNA_PW}literal-Lt11" }), "", []string{`credential "shop1"`, "klarna_password", "placeholder"}},
		{"klarna_password two placeholders", with(func(c *Credential) { c.KlarnaPassword = "{env.KSUT_KLARNA_PW}{env.KSUT_KUSTOM_PW}" }), "", []string{`credential "shop1"`, "klarna_password", "placeholder"}},
		{"klarna_password Caddyfile env", with(func(c *Credential) { c.KlarnaPassword = "{$KSUT_KLARNA_PW}" }), "", []string{`credential "shop1"`, "klarna_password", "placeholder"}},
		{"klarna_password empty env", with(func(c *Credential) { c.KlarnaPassword = "{env.KSUT_EMPTY}" }), "", []string{`credential "shop1"`, "klarna_password", "KSUT_EMPTY", "empty"}},
		{"klarna_password unset env", with(func(c *Credential) { c.KlarnaPassword = "{env.KSUT_NEVER_SET_X}" }), "", []string{`credential "shop1"`, "klarna_password", "KSUT_NEVER_SET_X"}},
		{"klarna_password missing file", with(func(c *Credential) { c.KlarnaPassword = "{file." + filepath.Join(t.TempDir(), "missing") + "}" }), "", []string{`credential "shop1"`, "klarna_password"}},
		{"klarna_password_hash not a hash", with(func(c *Credential) { c.KlarnaPassword, c.KlarnaPasswordHash = "", "hash-literal-Hl22" }), "", []string{`credential "shop1"`, "klarna_password_hash"}},
		{"klarna_password_hash scrypt-like", with(func(c *Credential) { c.KlarnaPassword, c.KlarnaPasswordHash = "", "$scrypt$hash-literal-Hl22" }), "", []string{`credential "shop1"`, "klarna_password_hash"}},
		{"klarna_password_hash broken bcrypt", with(func(c *Credential) { c.KlarnaPassword, c.KlarnaPasswordHash = "", "$2a$10$hash-literal-Hl22" }), "", []string{`credential "shop1"`, "klarna_password_hash"}},
		{"klarna_password_hash broken argon2id", with(func(c *Credential) { c.KlarnaPassword, c.KlarnaPasswordHash = "", "$argon2id$v=19$hash-literal-Hl22" }), "", []string{`credential "shop1"`, "klarna_password_hash"}},
		{"kustom_username empty placeholder", with(func(c *Credential) { c.KustomUsername = "{env.KSUT_EMPTY}" }), "", []string{`credential "shop1"`, "kustom_username", "KSUT_EMPTY"}},
		{"kustom_username with colon", with(func(c *Credential) { c.KustomUsername = "PM1:Gg37" }), "", []string{`credential "shop1"`, "kustom_username", "':'"}},
		{"kustom password and key", with(func(c *Credential) { c.KustomUsername, c.KustomPassword = ctKustomUser, kpw }), "", []string{`credential "shop1"`, "kustom_password", "kustom_api_key"}},
		{"kustom_password without username", with(func(c *Credential) { c.KustomAPIKey, c.KustomPassword = "", kpw }), "", []string{`credential "shop1"`, "kustom_username", "kustom_password"}},
		{"literal kustom_password", with(func(c *Credential) {
			c.KustomAPIKey, c.KustomUsername, c.KustomPassword = "", ctKustomUser, "literal-Lt11"
		}), "", []string{`credential "shop1"`, "kustom_password", "placeholder"}},
		{"kustom_password empty env", with(func(c *Credential) {
			c.KustomAPIKey, c.KustomUsername, c.KustomPassword = "", ctKustomUser, "{env.KSUT_EMPTY}"
		}), "", []string{`credential "shop1"`, "kustom_password", "empty"}},
		{"no kustom credential", with(func(c *Credential) { c.KustomAPIKey = "" }), "", []string{`credential "shop1"`, "kustom_api_key", "required"}},
		{"only kustom_username", with(func(c *Credential) { c.KustomAPIKey, c.KustomUsername = "", ctKustomUser }), "", []string{`credential "shop1"`, "kustom_api_key", "required"}},
		{"literal kustom_api_key", with(func(c *Credential) { c.KustomAPIKey = "kco_test_api_literal-Lt11" }), "", []string{`credential "shop1"`, "kustom_api_key", "placeholder"}},
		{"kustom_api_key empty env", with(func(c *Credential) { c.KustomAPIKey = "{env.KSUT_EMPTY}" }), "", []string{`credential "shop1"`, "kustom_api_key", "empty"}},
		{"kustom_api_key with CRLF", with(func(c *Credential) { c.KustomAPIKey = "{env.KSUT_KEY_CRLF}" }), "", []string{`credential "shop1"`, "kustom_api_key", "line break"}},
		{"kustom_api_key with trailing LF", with(func(c *Credential) { c.KustomAPIKey = "{env.KSUT_KEY_LF}" }), "", []string{`credential "shop1"`, "kustom_api_key", "line break"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := NewCredentialStore(testContext(t), c.creds, c.unknown)
			if err == nil {
				t.Fatalf("NewCredentialStore accepted %+v", c.creds)
			}
			msg := err.Error()
			for _, s := range c.wantIn {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not mention %q", msg, s)
				}
			}
			for _, s := range secrets {
				if strings.Contains(msg, s) {
					t.Errorf("error %q contains the secret %q", msg, s)
				}
			}
		})
	}
}

var authSink AuthOutcome

func BenchmarkAuthenticate(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("credentials=%d", n), func(b *testing.B) {
			s, _, err := NewCredentialStore(testContext(b), manyCredentials(b, n), "")
			if err != nil {
				b.Fatal(err)
			}
			i := n / 2
			right := authRequest(basicHeader(fmt.Sprintf("K%d_klarna", i), manyPassword(i)))
			unknown := authRequest(basicHeader("K_nobody", "pw"))
			b.Run("swapped", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					authSink = s.Authenticate(right)
				}
				if authSink.Result != ResultSwapped {
					b.Fatalf("outcome %+v", authSink)
				}
			})
			b.Run("unknown", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					authSink = s.Authenticate(unknown)
				}
				if authSink.Refusal != ReasonUnknownUsername {
					b.Fatalf("outcome %+v", authSink)
				}
			})
		})
	}
}

// decision is the part of an outcome a caller sees: who, what, why, and
// the header sent; not the limiter or the metric series behind it.
func decision(o AuthOutcome) AuthOutcome {
	o.counter, o.stored = nil, nil
	return o
}

// countingComparer counts the hashes a test makes the shim run; gate, when
// set, holds each Compare until the test lets it go, after telling entered.
type countingComparer struct {
	real    caddyauth.Comparer
	calls   atomic.Int32
	entered chan struct{}
	gate    chan struct{}
}

func (c *countingComparer) Compare(hashed, plaintext []byte) (bool, error) {
	c.calls.Add(1)
	if c.gate != nil {
		c.entered <- struct{}{}
		<-c.gate
	}
	return c.real.Compare(hashed, plaintext)
}

// countHashes puts a countingComparer in front of the comparer of the
// hashed credential for username.
func countHashes(t *testing.T, s *CredentialStore, username string) *countingComparer {
	t.Helper()
	sc := s.byUser[username]
	if sc == nil || sc.cmp == nil {
		t.Fatalf("%s is not a hashed credential", username)
	}
	c := &countingComparer{real: sc.cmp}
	sc.cmp = c
	return c
}

// takeHashSlots takes all but leave of the process-wide hash slots, as a
// flood's hashes in progress would, until the returned function gives them
// back (also at the end of the test).
func takeHashSlots(t *testing.T, leave int) (giveBack func()) {
	t.Helper()
	slots := hashSlots()
	n := cap(slots) - leave
	for i := 0; i < n; i++ {
		select {
		case slots <- struct{}{}:
		default:
			t.Fatalf("hash slot %d of %d is already taken: a hash is running outside this test", i+1, cap(slots))
		}
	}
	var once sync.Once
	giveBack = func() {
		once.Do(func() {
			for i := 0; i < n; i++ {
				<-slots
			}
		})
	}
	t.Cleanup(giveBack)
	return giveBack
}

// TestHashSlotsBoundHashWork: with every hash slot taken, a password that
// would need hashing is refused at once with too_many_requests and nothing
// is hashed; once a slot is free it is checked (wrong stays wrong); and once
// the right password has matched, every later attempt, right or wrong, is
// decided without a slot and without hashing, however busy the slots are.
func TestHashSlotsBoundHashWork(t *testing.T) {
	setSecrets(t)
	// A password of its own: argon2idHash's salt is fixed, and a hash that
	// matched in another test would be decided from that match here.
	const pw = ctHashedPW + "-slots"
	s, _ := newStore(t, []Credential{
		{Name: "bcrypt", KlarnaUsername: "K2_bcrypt", KlarnaPasswordHash: bcryptHash(t, pw), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "argon", KlarnaUsername: "K4_argon", KlarnaPasswordHash: argon2idHash(t, pw), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
		{Name: "plain", KlarnaUsername: "K1_plain", KlarnaPassword: "{env.KSUT_KLARNA_PW}", KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
	}, UnknownKeep)
	for _, c := range []struct{ user, name string }{{"K2_bcrypt", "bcrypt"}, {"K4_argon", "argon"}} {
		t.Run(c.name, func(t *testing.T) {
			hashes := countHashes(t, s, c.user)
			auth := func(pass string) AuthOutcome {
				return decision(s.Authenticate(authRequest(basicHeader(c.user, pass))))
			}
			busy := AuthOutcome{Credential: c.name, Result: ResultRejected, Refusal: ReasonTooManyRequests}
			wrong := AuthOutcome{Credential: c.name, Result: ResultRejected, Refusal: ReasonWrongPassword}
			right := AuthOutcome{Credential: c.name, Result: ResultSwapped, Authorization: "Basic " + ctKustomKey}

			giveBack := takeHashSlots(t, 0)
			for i := 0; i < 50; i++ {
				if got := auth(fmt.Sprintf("random-guess-%d", i)); got != busy {
					t.Fatalf("guess %d with every slot taken: %+v, want %+v", i, got, busy)
				}
			}
			if got := auth(pw); got != busy {
				t.Errorf("right password, never matched yet, slots taken: %+v, want %+v", got, busy)
			}
			if n := hashes.calls.Load(); n != 0 {
				t.Fatalf("%d hashes run with every slot taken, want 0", n)
			}
			// The plaintext credential needs no slot.
			if got := decision(s.Authenticate(authRequest(basicHeader("K1_plain", ctKlarnaPW)))); got.Result != ResultSwapped {
				t.Errorf("plaintext credential with slots taken: %+v, want swapped", got)
			}
			// For bcrypt, passwords that could never match (past its 72
			// bytes) need no slot either; argon2id reads them whole, so
			// they wait for a slot like any other.
			want73 := wrong
			if c.name == "argon" {
				want73 = busy
			}
			if got := auth(strings.Repeat("x", 73)); got != want73 {
				t.Errorf("73-byte password: %+v, want %+v", got, want73)
			}
			giveBack()

			if got := auth("wrong"); got != wrong {
				t.Errorf("wrong password, slot free: %+v, want %+v", got, wrong)
			}
			if got := auth(pw); got != right {
				t.Errorf("right password, slot free: %+v, want %+v", got, right)
			}
			if n := hashes.calls.Load(); n != 2 {
				t.Fatalf("%d hashes for two checks, want 2", n)
			}

			takeHashSlots(t, 0)
			start := time.Now()
			for i := 0; i < 100; i++ {
				if got := auth(pw); got != right {
					t.Fatalf("right password again, slots taken: %+v, want %+v (a matched password never waits for a slot)", got, right)
				}
				if got := auth(fmt.Sprintf("random-guess-%d", i)); got != wrong {
					t.Fatalf("guess after the match, slots taken: %+v, want %+v", got, wrong)
				}
			}
			if n := hashes.calls.Load(); n != 2 {
				t.Errorf("%d hashes, want still 2: after a match nothing is hashed", n)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("200 decisions from the remembered match took %v", d)
			}
		})
	}
}

// TestHashSlotsShareOneHash: callers checking the same password while it is
// being hashed wait for that one hash rather than taking a slot or being
// refused (a store's first burst costs one hash); a different password in
// the meantime finds the slots taken and gets too_many_requests.
func TestHashSlotsShareOneHash(t *testing.T) {
	setSecrets(t)
	s, _ := newStore(t, []Credential{
		{Name: "bcrypt", KlarnaUsername: "K2_bcrypt", KlarnaPasswordHash: bcryptHash(t, ctHashedPW), KustomAPIKey: "{env.KSUT_KUSTOM_KEY}"},
	}, "")
	hashes := countHashes(t, s, "K2_bcrypt")
	hashes.entered, hashes.gate = make(chan struct{}, 1), make(chan struct{})
	takeHashSlots(t, 1) // the first caller takes the last one
	auth := func(pass string) AuthOutcome {
		return decision(s.Authenticate(authRequest(basicHeader("K2_bcrypt", pass))))
	}

	const burst = 8
	results := make(chan AuthOutcome, burst)
	go func() { results <- auth(ctHashedPW) }()
	select {
	case <-hashes.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first caller never started hashing")
	}
	for i := 1; i < burst; i++ {
		go func() { results <- auth(ctHashedPW) }()
	}
	if got := auth("another-password"); got.Refusal != ReasonTooManyRequests {
		t.Errorf("another password while the only free slot hashes: %+v, want too_many_requests", got)
	}
	close(hashes.gate)
	for i := 0; i < burst; i++ {
		select {
		case got := <-results:
			if got.Result != ResultSwapped {
				t.Errorf("caller in the burst: %+v, want swapped", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a caller in the burst never got an answer")
		}
	}
	if n := hashes.calls.Load(); n != 1 {
		t.Errorf("%d hashes for a burst of one password, want 1", n)
	}
}

// TestProxyAuthBoundsHashWork: proxy_auth uses the same slots: busy is told
// apart from wrong (too_many_requests, not proxy_auth_required) and nothing
// is hashed for it, nor for an unknown proxy username; after a match the
// right password needs no slot.
func TestProxyAuthBoundsHashWork(t *testing.T) {
	hash := bcryptHash(t, "gateway-pw")
	hashers, err := provisionHashers(testContext(t), map[string][]caddyauth.Account{"bcrypt": {{Username: "apps", Password: hash}}})
	if err != nil {
		t.Fatal(err)
	}
	hba := hashers["bcrypt"]
	hashes := &countingComparer{real: hba.Hash}
	hba.Hash = hashes
	c := &connectIntercept{auth: hba}
	check := func(header string) Reason {
		r := httptest.NewRequest(http.MethodConnect, "http://api.klarna.com:443", nil)
		if header != "" {
			r.Header.Set("Proxy-Authorization", header)
		}
		return c.proxyAuthorized(r)
	}

	giveBack := takeHashSlots(t, 0)
	for _, h := range []string{"", "Bearer x", basicHeader("someone", "gateway-pw"), basicHeader("apps", strings.Repeat("x", 73))} {
		if got := check(h); got != ReasonProxyAuthRequired {
			t.Errorf("Proxy-Authorization %q: %q, want proxy_auth_required without a hash", h, got)
		}
	}
	for i := 0; i < 20; i++ {
		if got := check(basicHeader("apps", fmt.Sprintf("guess-%d", i))); got != ReasonTooManyRequests {
			t.Fatalf("guess with every slot taken: %q, want too_many_requests", got)
		}
	}
	if n := hashes.calls.Load(); n != 0 {
		t.Fatalf("%d hashes with every slot taken or no account, want 0", n)
	}
	giveBack()
	if got := check(basicHeader("apps", "nope")); got != ReasonProxyAuthRequired {
		t.Errorf("wrong proxy password: %q, want proxy_auth_required", got)
	}
	if got := check(basicHeader("apps", "gateway-pw")); got != "" {
		t.Errorf("right proxy password: %q, want authorized", got)
	}
	takeHashSlots(t, 0)
	if got := check(basicHeader("apps", "gateway-pw")); got != "" {
		t.Errorf("right proxy password again, slots taken: %q, want authorized without a slot", got)
	}
	if got := check(basicHeader("apps", "nope-again")); got != ReasonProxyAuthRequired {
		t.Errorf("wrong proxy password after the match, slots taken: %q, want proxy_auth_required", got)
	}
	if n := hashes.calls.Load(); n != 2 {
		t.Errorf("%d hashes, want 2 (one wrong, one right; the rest decided from the match)", n)
	}
	var nilIntercept *connectIntercept
	if got := nilIntercept.proxyAuthorized(httptest.NewRequest(http.MethodGet, "/", nil)); got != "" {
		t.Errorf("without proxy_auth: %q, want authorized", got)
	}
}

// TestHashSlotsSize: the bound is small, at most half the CPUs Go uses
// (at least 1) and at most maxHashSlots, so that a flood holds at most half
// the CPUs and argon2id's memory stays bounded.
func TestHashSlotsSize(t *testing.T) {
	n, procs := cap(hashSlots()), runtime.GOMAXPROCS(0)
	if n < 1 || n > maxHashSlots || n > max(1, procs/2) {
		t.Errorf("%d hash slots with GOMAXPROCS %d, want 1 to min(%d, GOMAXPROCS/2)", n, procs, maxHashSlots)
	}
	t.Logf("%d hash slot(s) with GOMAXPROCS %d", n, procs)
}
