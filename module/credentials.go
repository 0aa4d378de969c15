package module

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

// Credential pairs the Klarna key a legacy app still sends with the Kustom
// key that replaces it. One gateway can serve many stores, so a handler holds
// any number of these, told apart by the Klarna username.
type Credential struct {
	// A short name for logs, metrics and the status page (letters, digits,
	// '.', '_', '-'). Never a secret: it is what an operator greps for.
	Name string `json:"name"`

	// The Klarna API username the app sends, such as K123456_abcd12345 (or
	// PK… on the playground). May be a placeholder.
	KlarnaUsername string `json:"klarna_username"`

	// The Klarna API password the app sends. Must be an {env.*} or {file.*}
	// placeholder, expanded when the config loads, so that the secret never
	// sits in the config Caddy's admin API serves. Exclusive with
	// klarna_password_hash.
	KlarnaPassword string `json:"klarna_password,omitempty"`

	// A bcrypt or argon2id hash of the Klarna password (as `caddy
	// hash-password` prints it), for a config that must hold no secret at
	// all. Checked through Caddy's comparers, but hashed only until it has
	// matched once: a digest of the password that matched is remembered
	// (see checkHashed). A password that must be hashed waits for no one:
	// when the few hash slots are taken it is refused with
	// too_many_requests, so that a flood of guesses cannot spend the
	// gateway's CPU and memory.
	KlarnaPasswordHash string `json:"klarna_password_hash,omitempty"`

	// The Kustom API username (merchant id joined with a suffix). Optional
	// with kustom_api_key, which Kustom also accepts alone.
	KustomUsername string `json:"kustom_username,omitempty"`

	// The Kustom API password, sent with kustom_username. Must be an {env.*}
	// or {file.*} placeholder. Exclusive with kustom_api_key.
	KustomPassword string `json:"kustom_password,omitempty"`

	// A Kustom API key (kco_live_api_… or kco_test_api_…). Alone it is sent
	// as "Authorization: Basic <key>", as Kustom documents; with
	// kustom_username it is sent as the password. Must be an {env.*} or
	// {file.*} placeholder.
	KustomAPIKey string `json:"kustom_api_key,omitempty"`

	// At most this many of this credential's requests are in flight to
	// Kustom at once; more get 429 with Retry-After. 0: no limit. On a
	// shared gateway it keeps one store's burst from starving the others.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
}

// What happened to a caller's credentials; also the metrics label values.
const (
	ResultSwapped  = "swapped"
	ResultKept     = "kept"
	ResultRejected = "rejected"
)

// UnknownCredential is the credential label for callers that matched none.
const UnknownCredential = "unknown"

// UnknownCredentials policies.
const (
	UnknownReject = "reject"
	UnknownKeep   = "keep"
)

// AuthOutcome is the decision for one request's credentials.
type AuthOutcome struct {
	Credential string // configured name, or UnknownCredential
	Result     string // ResultSwapped, ResultKept or ResultRejected
	Refusal    Reason // set when Result is ResultRejected
	// Authorization is the header value to send upstream when Result is
	// ResultSwapped; otherwise the caller's own header goes unchanged.
	Authorization string

	stored *storedCredential // the matched credential, when swapped

	counter prometheus.Counter // kustom_shim_credentials_total for this outcome
	held    bool               // Acquire took a max_concurrent slot
}

// Count adds the outcome to kustom_shim_credentials_total.
func (a *AuthOutcome) Count() {
	if a.counter != nil {
		a.counter.Inc()
	}
}

// Swap puts the Kustom key in r's Authorization when the outcome says to,
// and reports whether it did. Safe to change in place: the access log holds
// its own clone of the request, made before any handler ran.
func (a *AuthOutcome) Swap(r *http.Request) bool {
	if a.Result != ResultSwapped || a.stored == nil {
		return false
	}
	r.Header["Authorization"] = a.stored.header // built once per credential, never modified
	return true
}

// Acquire takes one of the credential's max_concurrent slots; false means
// the credential is at its limit. Release gives it back.
func (a *AuthOutcome) Acquire() bool {
	if a.stored == nil || a.stored.limit == nil {
		return true
	}
	a.held = a.stored.limit.acquire()
	return a.held
}

// Release gives back the slot Acquire took, if any.
func (a *AuthOutcome) Release() {
	if a.held {
		a.stored.limit.release()
		a.held = false
	}
}

// concurrencyLimit counts one credential's requests in flight.
type concurrencyLimit struct {
	max      int32
	inflight atomic.Int32
}

func (l *concurrencyLimit) acquire() bool {
	if l.inflight.Add(1) > l.max {
		l.inflight.Add(-1)
		return false
	}
	return true
}

func (l *concurrencyLimit) release() { l.inflight.Add(-1) }

// storedCredential is a Credential resolved for the hot path: the outgoing
// header is built once and the password is kept only as a digest.
type storedCredential struct {
	name        string
	passwordSum [sha256.Size]byte // plaintext Klarna password, hashed for a fixed-length compare
	// With klarna_password_hash: the hash as configured, and the comparer
	// for its algorithm (nil for a plaintext credential).
	hash          string
	cmp           caddyauth.Comparer
	authorization string
	header        []string // {authorization}: the header value, never modified
	limit         *concurrencyLimit
	// The credential's kustom_shim_credentials_total series, resolved once.
	swapped, rejected prometheus.Counter
}

// CredentialStore matches callers' Basic credentials against the configured
// Klarna keys.
type CredentialStore struct {
	byUser      map[string]*storedCredential
	keepUnknown bool
}

// ResolvedCredential is what kustom-verify needs of a credential: never
// logged, never printed.
type ResolvedCredential struct {
	Name          string
	Authorization string
	// Environment is what the Kustom key's prefix says it is for:
	// TargetProduction (kco_live_…), TargetPlayground (kco_test_…) or "".
	Environment string
}

var credentialName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// NewCredentialStore validates and resolves creds. Errors name the credential
// and the field, never a value. ctx loads Caddy's hash comparers.
func NewCredentialStore(ctx caddy.Context, creds []Credential, unknown string) (*CredentialStore, []ResolvedCredential, error) {
	s := &CredentialStore{byUser: make(map[string]*storedCredential, len(creds))}
	switch unknown {
	case "", UnknownReject:
	case UnknownKeep:
		s.keepUnknown = true
	default:
		return nil, nil, fmt.Errorf("unknown_credentials: %q is not one of reject, keep", unknown)
	}
	repl := caddy.NewReplacer()
	names := map[string]bool{}
	hashed := map[string][]caddyauth.Account{}      // by algorithm
	hashedCreds := map[string][]*storedCredential{} // by algorithm, to attach the comparer once provisioned
	var resolved []ResolvedCredential
	for i, c := range creds {
		cr := credentialResolver{c: c, repl: repl, where: fmt.Sprintf("credential %d", i)}
		if c.Name != "" {
			cr.where = fmt.Sprintf("credential %q", c.Name)
		}
		if err := cr.checkName(names); err != nil {
			return nil, nil, err
		}
		user, sc, err := cr.klarnaSide(s.byUser)
		if err != nil {
			return nil, nil, err
		}
		environment, err := cr.kustomSide(sc)
		if err != nil {
			return nil, nil, err
		}
		if sc.hash != "" {
			algo, _ := hashAlgorithm(sc.hash) // checked by klarnaSide
			hashed[algo] = append(hashed[algo], caddyauth.Account{Username: user, Password: sc.hash})
			hashedCreds[algo] = append(hashedCreds[algo], sc)
		}
		s.byUser[user] = sc
		resolved = append(resolved, ResolvedCredential{Name: c.Name, Authorization: sc.authorization, Environment: environment})
	}
	hashers, err := provisionHashers(ctx, hashed)
	if err != nil {
		return nil, nil, err
	}
	for algo, scs := range hashedCreds {
		for _, sc := range scs {
			sc.cmp = hashers[algo].Hash
		}
	}
	return s, resolved, nil
}

// credentialResolver checks and resolves one configured credential; its
// errors name the credential and the field, never a value.
type credentialResolver struct {
	c     Credential
	repl  *caddy.Replacer
	where string // "credential \"shop1\"", or its index when unnamed
}

func (cr credentialResolver) fail(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", cr.where, field, fmt.Sprintf(format, args...))
}

// checkName checks the name (a metric label and a store's name) and that
// no other credential has it.
func (cr credentialResolver) checkName(names map[string]bool) error {
	switch name := cr.c.Name; {
	case !credentialName.MatchString(name):
		return cr.fail("name", "must be 1-64 letters, digits, '.', '_' or '-'")
	case name == UnknownCredential:
		return cr.fail("name", "%q is reserved for callers that match no credential", UnknownCredential)
	case names[name]:
		return cr.fail("name", "used by another credential")
	}
	names[cr.c.Name] = true
	return nil
}

// klarnaSide resolves what the app sends: the Klarna username (unique) and
// password (a digest, or a hash to check), and the concurrency limit.
func (cr credentialResolver) klarnaSide(byUser map[string]*storedCredential) (string, *storedCredential, error) {
	c := cr.c
	user, err := expand(cr.repl, c.KlarnaUsername)
	if err != nil {
		return "", nil, cr.fail("klarna_username", "%v", err)
	}
	if user == "" || strings.Contains(user, ":") {
		return "", nil, cr.fail("klarna_username", "required, and may not contain ':'")
	}
	if _, dup := byUser[user]; dup {
		return "", nil, cr.fail("klarna_username", "used by another credential")
	}
	sc := &storedCredential{name: c.Name,
		swapped:  shimMetrics.credentials.WithLabelValues(c.Name, ResultSwapped),
		rejected: shimMetrics.credentials.WithLabelValues(c.Name, ResultRejected)}
	switch {
	case c.MaxConcurrent < 0:
		return "", nil, cr.fail("max_concurrent", "must not be negative")
	case c.MaxConcurrent > 0:
		sc.limit = &concurrencyLimit{max: int32(min(c.MaxConcurrent, 1<<30))}
	}
	switch {
	case c.KlarnaPassword != "" && c.KlarnaPasswordHash != "":
		return "", nil, cr.fail("klarna_password", "set klarna_password or klarna_password_hash, not both")
	case c.KlarnaPassword != "":
		pw, err := expandSecret(cr.repl, c.KlarnaPassword)
		if err != nil {
			return "", nil, cr.fail("klarna_password", "%v", err)
		}
		sc.passwordSum = sha256.Sum256([]byte(pw))
	case c.KlarnaPasswordHash != "":
		if _, err := hashAlgorithm(c.KlarnaPasswordHash); err != nil {
			return "", nil, cr.fail("klarna_password_hash", "%v", err)
		}
		sc.hash = c.KlarnaPasswordHash
	default:
		return "", nil, cr.fail("klarna_password", "required (or klarna_password_hash)")
	}
	return user, sc, nil
}

// kustomSide builds the Authorization the shim sends instead, once, and
// tells which Kustom environment the key is for (by its prefix).
func (cr credentialResolver) kustomSide(sc *storedCredential) (environment string, err error) {
	c := cr.c
	kuser, err := expand(cr.repl, c.KustomUsername)
	if err != nil {
		return "", cr.fail("kustom_username", "%v", err)
	}
	if strings.Contains(kuser, ":") {
		return "", cr.fail("kustom_username", "may not contain ':' (Basic auth would split it)")
	}
	switch {
	case c.KustomPassword != "" && c.KustomAPIKey != "":
		return "", cr.fail("kustom_password", "set kustom_password or kustom_api_key, not both")
	case c.KustomPassword != "":
		if kuser == "" {
			return "", cr.fail("kustom_username", "required with kustom_password")
		}
		pw, err := expandSecret(cr.repl, c.KustomPassword)
		if err != nil {
			return "", cr.fail("kustom_password", "%v", err)
		}
		sc.authorization = basic(kuser, pw)
	case c.KustomAPIKey != "":
		key, err := expandSecret(cr.repl, c.KustomAPIKey)
		if err != nil {
			return "", cr.fail("kustom_api_key", "%v", err)
		}
		switch {
		case strings.HasPrefix(key, "kco_live_"):
			environment = TargetProduction
		case strings.HasPrefix(key, "kco_test_"):
			environment = TargetPlayground
		}
		sc.authorization = "Basic " + key
		if kuser != "" {
			sc.authorization = basic(kuser, key)
		}
	default:
		return "", cr.fail("kustom_api_key", "required (or kustom_username with kustom_password)")
	}
	if strings.ContainsAny(sc.authorization, "\r\n") {
		return "", cr.fail("kustom_api_key", "contains a line break")
	}
	sc.header = []string{sc.authorization}
	return environment, nil
}

// provisionHashers builds one Caddy basic-auth provider per hash algorithm,
// for its comparer (Hash) and, for proxy_auth, its account. Caddy's own
// HashCache is not used: its results cannot be read without possibly
// hashing, so a flood could not be refused before the hash; checkHashed
// keeps its own cache instead.
func provisionHashers(ctx caddy.Context, hashed map[string][]caddyauth.Account) (map[string]*caddyauth.HTTPBasicAuth, error) {
	hashers := map[string]*caddyauth.HTTPBasicAuth{}
	algos := make([]string, 0, len(hashed))
	for a := range hashed {
		algos = append(algos, a)
	}
	sort.Strings(algos)
	for _, algo := range algos {
		hba := &caddyauth.HTTPBasicAuth{
			HashRaw:     json.RawMessage(`{"algorithm":"` + algo + `"}`),
			AccountList: hashed[algo],
		}
		if err := hba.Provision(ctx); err != nil {
			return nil, fmt.Errorf("klarna_password_hash: %v", err)
		}
		hashers[algo] = hba
	}
	return hashers, nil
}

// The credentials_total series of callers that match no credential.
var (
	unknownKept     = shimMetrics.credentials.WithLabelValues(UnknownCredential, ResultKept)
	unknownRejected = shimMetrics.credentials.WithLabelValues(UnknownCredential, ResultRejected)
)

// Authenticate decides what to do with r's credentials. It never reads the
// body and never changes r.
func (s *CredentialStore) Authenticate(r *http.Request) AuthOutcome {
	rejectOrKeep := func(reason Reason) AuthOutcome {
		if s.keepUnknown {
			return AuthOutcome{Credential: UnknownCredential, Result: ResultKept, counter: unknownKept}
		}
		return AuthOutcome{Credential: UnknownCredential, Result: ResultRejected, Refusal: reason, counter: unknownRejected}
	}
	if len(r.Header["Authorization"]) == 0 {
		return rejectOrKeep(ReasonMissingCredentials)
	}
	var buf [basicBufSize]byte
	user, pass, ok := decodeBasic(r.Header.Get("Authorization"), buf[:])
	if !ok {
		// Also Kustom's own "Basic <API key>" form: kept under keep.
		return rejectOrKeep(ReasonMalformedAuthorization)
	}
	sc, found := s.byUser[string(user)] // no allocation for a map key
	if !found {
		return rejectOrKeep(ReasonUnknownUsername)
	}
	switch sc.checkPassword(r.Context(), pass) {
	case passwordWrong:
		// A known Klarna username with a wrong password is refused even under
		// keep: forwarding a password we know to be wrong helps nobody.
		return AuthOutcome{Credential: sc.name, Result: ResultRejected, Refusal: ReasonWrongPassword, counter: sc.rejected}
	case passwordBusy:
		// Right or wrong is unknown: the hash was not run. Refused even
		// under keep, as the caller named a configured username.
		return AuthOutcome{Credential: sc.name, Result: ResultRejected, Refusal: ReasonTooManyRequests, counter: sc.rejected}
	}
	return AuthOutcome{Credential: sc.name, Result: ResultSwapped, Authorization: sc.authorization, stored: sc, counter: sc.swapped}
}

func (sc *storedCredential) checkPassword(ctx context.Context, pass []byte) passwordVerdict {
	if sc.cmp != nil {
		return checkHashed(ctx, sc.cmp, sc.hash, pass)
	}
	sum := sha256.Sum256(pass)
	if subtle.ConstantTimeCompare(sum[:], sc.passwordSum[:]) == 1 {
		return passwordRight
	}
	return passwordWrong
}

// passwordVerdict is what checking a password found.
type passwordVerdict uint8

const (
	passwordWrong passwordVerdict = iota
	passwordRight
	// passwordBusy: the password would have to be hashed and every hash
	// slot is taken; it was not checked.
	passwordBusy
)

// Hashing a guess is the only thing a caller can make the shim do that
// costs far more than answering it: bcrypt at cost 14 is about a second of
// CPU, argon2id at `hash-password`'s defaults 46 MiB of memory, per
// attempt. Unbounded, 24 callers sending random passwords raised a
// legitimate store's p99 latency a hundredfold and an argon2id flood took
// the process from 56 MiB to 2.8 GiB. So hash work is bounded, process-wide
// (a flood on one credential, or on proxy_auth, must not be multiplied by
// the number of credentials or servers), and never queued: a caller that
// finds every slot taken is refused at once with 429 too_many_requests
// (Retry-After), before any hashing.
//
// A legitimate caller is not hurt by the bound, because a hash is paid once
// per configured hash, not per request: the digest of the password that
// matched is remembered (verifiedHashes), and every later request, right or
// wrong, is decided from it without a slot. What a flood can still deny is
// the first check of a hash nobody has yet used successfully since the
// process started; that caller gets 429 and its retry gets through when a
// slot is free.

// hashSlots is the number of password hashes that may run at once: half the
// CPUs Go may use, so that a flood never holds more than half of them and
// the rest keep serving traffic; at least 1, so hashed credentials still
// work on one CPU; at most maxHashSlots. More slots would buy legitimate
// callers nothing (each configured hash is paid once per process) and a
// flood takes every slot there is, so each extra slot would only be one
// more CPU and, for argon2id at the defaults, 46 MiB more memory for the
// flood. Sized on first use, after Caddy's start-up has set GOMAXPROCS
// from the cgroup.
var hashSlots = sync.OnceValue(func() chan struct{} {
	return make(chan struct{}, min(maxHashSlots, max(1, runtime.GOMAXPROCS(0)/2)))
})

const maxHashSlots = 2

// verifiedHashes remembers, for each hash that has matched a password, a
// digest of that password: SHA-256 over the hash and the password, so the
// plaintext is never stored and the digest is salted by the hash's own
// salt. A hash has exactly one matching password (bcrypt is injective on
// passwords of at most 72 bytes without NUL, the only ones checkHashed
// hashes for bcrypt; argon2id reads the whole password), so the entry answers every
// later attempt against that hash: the same digest is right, any other
// wrong. Only matches are stored, so only someone who knows a password can
// add an entry and a flood of guesses can neither fill the cache nor evict
// a legitimate entry; it holds at most one entry per configured hash, and
// maxVerified bounds what old configs leave behind across reloads. It is
// process-wide so that a reload does not make every store pay its hash, and
// its slot, again.
type verifiedHashes struct {
	mu sync.RWMutex
	m  map[string][sha256.Size]byte // by hash
}

const maxVerified = 4096

var verified = &verifiedHashes{m: map[string][sha256.Size]byte{}}

// lookup decides pass from the remembered match for hash; known is false
// when hash has not matched yet.
func (v *verifiedHashes) lookup(hash string, digest *[sha256.Size]byte) (verdict passwordVerdict, known bool) {
	v.mu.RLock()
	want, ok := v.m[hash]
	v.mu.RUnlock()
	if !ok {
		return passwordWrong, false
	}
	if subtle.ConstantTimeCompare(want[:], digest[:]) == 1 {
		return passwordRight, true
	}
	return passwordWrong, true
}

func (v *verifiedHashes) add(hash string, digest [sha256.Size]byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.m[hash]; !ok && len(v.m) >= maxVerified {
		for old := range v.m { // any one: the cap only matters after many reloads
			delete(v.m, old)
			break
		}
	}
	v.m[hash] = digest
}

// hashFlight is one hash in progress; callers with the same hash and
// password wait for its verdict instead of taking another slot, so that a
// store's first burst after a start or reload costs one hash, not a 429 for
// all but one of its requests.
type hashFlight struct {
	done    chan struct{}
	verdict passwordVerdict
}

var flights = struct {
	sync.Mutex
	m map[[sha256.Size]byte]*hashFlight // by passwordDigest
}{m: map[[sha256.Size]byte]*hashFlight{}}

// passwordDigest is the key of verifiedHashes and flights for pass checked
// against hash (which contains no NUL, so the encoding is unambiguous).
func passwordDigest(hash string, pass []byte) [sha256.Size]byte {
	var buf [256]byte // on the stack for every real hash and password
	b := append(buf[:0], hash...)
	b = append(b, 0)
	b = append(b, pass...)
	return sha256.Sum256(b)
}

// checkHashed checks pass against hash with cmp: from verifiedHashes when
// hash has matched before, else by joining the same check in flight, else
// by hashing in one of hashSlots if one is free right now, else
// passwordBusy without hashing. ctx ends a wait for another's hash.
func checkHashed(ctx context.Context, cmp caddyauth.Comparer, hash string, pass []byte) passwordVerdict {
	// bcrypt reads at most 72 bytes and stops at NUL, so "pw\x00pw" or a
	// longer password sharing the first 72 bytes would match too; argon2id
	// reads the whole password, so any length is checked there.
	if strings.HasPrefix(hash, "$2") && (len(pass) > 72 || bytes.IndexByte(pass, 0) >= 0) {
		return passwordWrong
	}
	digest := passwordDigest(hash, pass)
	if v, known := verified.lookup(hash, &digest); known {
		return v
	}
	flights.Lock()
	// Again under the lock: a flight for this hash may have just landed
	// (it records its match before it leaves flights).
	if v, known := verified.lookup(hash, &digest); known {
		flights.Unlock()
		return v
	}
	if f := flights.m[digest]; f != nil {
		flights.Unlock()
		select {
		case <-f.done:
			return f.verdict
		case <-ctx.Done():
			return passwordBusy // the caller has gone; nobody reads this
		}
	}
	slots := hashSlots()
	select {
	case slots <- struct{}{}:
	default:
		flights.Unlock()
		return passwordBusy
	}
	f := &hashFlight{done: make(chan struct{}), verdict: passwordWrong}
	flights.m[digest] = f
	flights.Unlock()
	defer func() { // also if the comparer panics: never leak a slot or strand a waiter
		<-slots
		if f.verdict == passwordRight {
			verified.add(hash, digest)
		}
		flights.Lock()
		delete(flights.m, digest)
		flights.Unlock()
		close(f.done)
	}()
	if ok, err := cmp.Compare([]byte(hash), pass); ok && err == nil {
		f.verdict = passwordRight
	}
	if strings.HasPrefix(hash, "$argon2id$") {
		// The hash's memory (46 MiB at the defaults) is garbage now. Left to
		// the pacer, hash after hash would each take fresh pages until the
		// heap doubled, and freed pages go back to the system only slowly:
		// a flood measured 290 MiB of RSS with one slot. Collected here,
		// while the slot is still held (so the work stays bounded too), the
		// next hash reuses the same pages.
		runtime.GC()
	}
	return f.verdict
}

// basicBufSize covers every real Basic header on the stack; a longer one is
// decoded on the heap, with the same result.
const basicBufSize = 256

// decodeBasic is net/http's Basic parsing (a case-insensitive "Basic "
// prefix, standard padded base64, split at the first ':') into buf, so that
// the hot path allocates nothing. The results alias buf.
func decodeBasic(auth string, buf []byte) (user, pass []byte, ok bool) {
	const prefix = "Basic "
	if len(auth) < len(prefix) || !asciiEqualFold(auth[:len(prefix)], prefix) {
		return nil, nil, false
	}
	enc := auth[len(prefix):]
	if n := base64.StdEncoding.DecodedLen(len(enc)); n > len(buf) {
		buf = make([]byte, n)
	}
	n, err := base64.StdEncoding.Decode(buf, unsafeBytes(enc))
	if err != nil {
		return nil, nil, false
	}
	user, pass, ok = bytes.Cut(buf[:n], []byte{':'})
	return user, pass, ok
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// unsafeBytes views s as bytes for a read-only use (base64 decoding), to
// avoid copying the header.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// hashAlgorithm names the comparer for a hash and checks that the hash is
// well formed, so that a truncated paste fails at load instead of refusing
// every request with wrong_password.
func hashAlgorithm(hash string) (string, error) {
	switch {
	case strings.HasPrefix(hash, "$2a$"), strings.HasPrefix(hash, "$2b$"), strings.HasPrefix(hash, "$2y$"):
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || len(hash) != 60 {
			return "", fmt.Errorf("not a well-formed bcrypt hash")
		}
		return "bcrypt", nil
	case strings.HasPrefix(hash, "$argon2id$"):
		if _, _, err := caddyauth.DecodeHash([]byte(hash)); err != nil {
			return "", fmt.Errorf("not a well-formed argon2id hash")
		}
		return "argon2id", nil
	}
	return "", fmt.Errorf("not a bcrypt or argon2id hash (make one with: kustom-shim hash-password)")
}

// expand replaces global placeholders ({env.*}, {file.*}) and fails on an
// unknown or empty one, naming the placeholder (which is not the secret).
func expand(repl *caddy.Replacer, v string) (string, error) {
	if v == "" {
		return "", nil
	}
	out, err := repl.ReplaceOrErr(v, true, true)
	if err != nil {
		return "", err
	}
	return out, nil
}

// expandSecret is expand for a field that must not hold a literal secret: the
// admin API serves the config as written, so only a placeholder keeps the
// secret out of it.
func expandSecret(repl *caddy.Replacer, v string) (string, error) {
	if !isSecretPlaceholder(v) {
		return "", fmt.Errorf("must be a placeholder such as {env.KUSTOM_API_KEY} or {file./run/secrets/kustom_api_key}, " +
			"so that the secret stays out of the config served by the admin API (in a Caddyfile write {env.NAME}, not {$NAME}, which is expanded when the Caddyfile is adapted)")
	}
	out, err := expand(repl, v)
	if err != nil {
		return "", err
	}
	if out == "" {
		return "", fmt.Errorf("placeholder %s is empty", v)
	}
	return out, nil
}

func isSecretPlaceholder(v string) bool {
	return (strings.HasPrefix(v, "{env.") || strings.HasPrefix(v, "{file.")) &&
		strings.HasSuffix(v, "}") && strings.Count(v, "{") == 1 && strings.Count(v, "}") == 1
}
