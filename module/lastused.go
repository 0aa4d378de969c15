package module

import (
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Key values: what the shim did with the caller's Authorization. They are
// metric label values, so they stay few and fixed.
const (
	// KeySwapped: the app sent a Klarna key that the shim replaced with a
	// configured Kustom key. Such an app breaks when the shim goes.
	KeySwapped = "swapped"
	// KeyKept: the app's own Authorization went to the upstream unchanged.
	KeyKept = "kept"
)

// UsageKey is one row of the switch report: who called (the store, by the
// configured credential's name, and the host the app addressed) and how
// (where the shim sent it, and whether it swapped the key). Every field is a
// bounded metric label: services are fixed, hosts come from the host map,
// credentials from the config, keys are KeySwapped or KeyKept.
type UsageKey struct {
	Service  Service `json:"service"`
	FromHost string  `json:"from_host"`
	ToHost   string  `json:"to_host"`
	// Credential is the configured credential's name when the shim swapped
	// the key, "" when the caller's own key went through.
	Credential string `json:"credential"`
	Key        string `json:"key"`
}

// Failure says why a call that reached for the upstream did not work. The
// shim's own refusals are not failures: they never left the shim and are
// counted in kustom_shim_refused_total.
type Failure string

const (
	FailureUnreachable Failure = "upstream_unreachable" // DNS, connect, TLS: nothing answered
	FailureTimeout     Failure = "upstream_timeout"     // no response header in time
	Failure5xx         Failure = "upstream_5xx"         // the upstream answered 500 or above
	FailureKeyRejected Failure = "kustom_rejected_key"  // the upstream answered 401 or 403
)

// failures indexes Failure values, so that an entry can hold its latest one
// in an atomic integer.
var failures = []Failure{"", FailureUnreachable, FailureTimeout, Failure5xx, FailureKeyRejected}

func failureIndex(f Failure) uint32 {
	for i, g := range failures {
		if g == f {
			return uint32(i)
		}
	}
	return 0
}

// Client is one User-Agent seen on a row, so that a merchant can tell which
// integration to fix (kco_rest_php, a WooCommerce plugin, …).
type Client struct {
	UserAgent string    `json:"user_agent"`
	Seen      time.Time `json:"seen"`
}

// MaxClients is how many distinct User-Agents a row keeps, newest first.
const MaxClients = 5

// maxUserAgent bounds a stored User-Agent: enough to name an integration and
// its version, not enough to turn the status page into a store of whatever
// a client chooses to send.
const maxUserAgent = 120

// Usage is the evidence for one row: when it was last used, when a call last
// worked and when one last failed, and why.
type Usage struct {
	UsageKey
	LastUsed time.Time `json:"last_used"`
	// LastOK is the last call the upstream answered below 500 and not 401
	// or 403.
	LastOK      time.Time `json:"last_ok,omitzero"`
	LastFailed  time.Time `json:"last_failed,omitzero"`
	LastFailure Failure   `json:"last_failure,omitempty"`
	// Clients are the most recent distinct User-Agents, newest first.
	Clients []Client `json:"clients,omitempty"`
}

// UsageEntry is one row's live evidence. The hot path updates it with
// atomics only; the client list takes a lock only when the User-Agent
// differs from the previous call's.
type UsageEntry struct {
	used, ok, failed atomic.Int64  // unix nanoseconds
	failure          atomic.Uint32 // index into failures
	lastAgent        atomic.Pointer[string]

	mu      sync.Mutex
	clients []Client

	dirty *atomic.Bool // the tracker's
}

// maxAtomic raises v to ns.
func maxAtomic(v *atomic.Int64, ns int64) {
	for {
		old := v.Load()
		if ns <= old || v.CompareAndSwap(old, ns) {
			return
		}
	}
}

// Used records a call sent at t by userAgent.
func (e *UsageEntry) Used(t time.Time, userAgent string) {
	maxAtomic(&e.used, t.UnixNano())
	if p := e.lastAgent.Load(); p == nil || *p != userAgent {
		ua := userAgent // only a new User-Agent is copied to the heap
		e.lastAgent.Store(&ua)
		e.addClient(ua, t)
	}
	e.dirty.Store(true)
}

// OK records a call the upstream accepted at t.
func (e *UsageEntry) OK(t time.Time) {
	maxAtomic(&e.ok, t.UnixNano())
	e.dirty.Store(true)
}

// Failed records a call that failed at t. The time and the reason change
// together, under the entry's lock (failures are the rare path), so that a
// reader never pairs one failure's time with another's reason.
func (e *UsageEntry) Failed(t time.Time, f Failure) {
	ns := t.UnixNano()
	e.mu.Lock()
	if ns >= e.failed.Load() {
		e.failure.Store(failureIndex(f))
		e.failed.Store(ns)
	}
	e.mu.Unlock()
	e.dirty.Store(true)
}

func (e *UsageEntry) addClient(userAgent string, t time.Time) {
	ua := cleanUserAgent(userAgent)
	if ua == "" {
		return
	}
	e.mu.Lock()
	e.clients = addClient(e.clients, Client{UserAgent: ua, Seen: t.UTC()})
	e.mu.Unlock()
}

// addClient puts c in front of list, dropping an older entry for the same
// User-Agent and anything past MaxClients.
func addClient(list []Client, c Client) []Client {
	out := make([]Client, 0, MaxClients)
	out = append(out, c)
	for _, o := range list {
		if o.UserAgent != c.UserAgent && len(out) < MaxClients {
			out = append(out, o)
		}
	}
	return out
}

// mergeClients is the newest MaxClients distinct User-Agents of a and b.
func mergeClients(a, b []Client) []Client {
	latest := map[string]time.Time{}
	for _, l := range [][]Client{a, b} {
		for _, c := range l {
			if c.Seen.After(latest[c.UserAgent]) || latest[c.UserAgent].IsZero() {
				latest[c.UserAgent] = c.Seen
			}
		}
	}
	out := make([]Client, 0, len(latest))
	for ua, t := range latest {
		out = append(out, Client{UserAgent: ua, Seen: t})
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Seen.Equal(out[j].Seen) {
			return out[i].Seen.After(out[j].Seen)
		}
		return out[i].UserAgent < out[j].UserAgent
	})
	if len(out) > MaxClients {
		out = out[:MaxClients]
	}
	return out
}

// cleanUserAgent keeps printable ASCII, at most maxUserAgent characters: the
// status page shows it, and a header is the client's to fill.
func cleanUserAgent(s string) string {
	b := make([]byte, 0, min(len(s), maxUserAgent))
	for i := 0; i < len(s) && len(b) < maxUserAgent; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		}
	}
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return string(b)
}

func (e *UsageEntry) snapshot(k UsageKey) Usage {
	u := Usage{UsageKey: k, LastUsed: nsTime(e.used.Load()), LastOK: nsTime(e.ok.Load())}
	e.mu.Lock()
	u.LastFailed = nsTime(e.failed.Load())
	if !u.LastFailed.IsZero() {
		u.LastFailure = failures[e.failure.Load()]
	}
	u.Clients = append([]Client(nil), e.clients...)
	e.mu.Unlock()
	return u
}

// merge raises the entry to at least u (state read back from storage, or
// the previous config's).
func (e *UsageEntry) merge(u Usage) {
	if !u.LastUsed.IsZero() {
		maxAtomic(&e.used, u.LastUsed.UnixNano())
	}
	if !u.LastOK.IsZero() {
		maxAtomic(&e.ok, u.LastOK.UnixNano())
	}
	if !u.LastFailed.IsZero() {
		e.Failed(u.LastFailed, u.LastFailure)
	}
	e.mu.Lock()
	e.clients = mergeClients(e.clients, u.Clients)
	e.mu.Unlock()
}

func nsTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// Tracker keeps the evidence per row for this instance, the rows its peers
// in shared storage reported, and since when this storage has been
// observing. Rows are bounded by the config; the write lock is taken only
// the first time a row is seen.
type Tracker struct {
	mu    sync.RWMutex
	local map[UsageKey]*UsageEntry
	peers map[UsageKey]Usage
	dirty atomic.Bool

	since     atomic.Int64 // this instance's observing-since, unix ns
	peerSince atomic.Int64 // the earliest of its peers', 0 when none
}

// NewTracker returns an empty tracker that has been observing since now.
func NewTracker(now time.Time) *Tracker {
	t := &Tracker{local: map[UsageKey]*UsageEntry{}, peers: map[UsageKey]Usage{}}
	t.since.Store(now.UnixNano())
	t.dirty.Store(true) // the first write records when observing began
	return t
}

// Entry is the row's live evidence, created on first use. Handlers resolve
// it once per request.
func (t *Tracker) Entry(k UsageKey) *UsageEntry {
	t.mu.RLock()
	e := t.local[k]
	t.mu.RUnlock()
	if e != nil {
		return e
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e = t.local[k]; e == nil {
		e = &UsageEntry{dirty: &t.dirty}
		t.local[k] = e
	}
	return e
}

// ObservingSince is when this instance's storage began observing (it
// survives restarts through the state file).
func (t *Tracker) ObservingSince() time.Time { return nsTime(t.since.Load()) }

// FleetObservingSince is the earliest observing-since of this instance and
// its peers in shared storage: the fleet has watched calls since then.
func (t *Tracker) FleetObservingSince() time.Time {
	s := t.since.Load()
	if p := t.peerSince.Load(); p != 0 && p < s {
		s = p
	}
	return nsTime(s)
}

// KeepObservingSince lowers this instance's observing-since to since (its
// own state file, read back after a restart).
func (t *Tracker) KeepObservingSince(since time.Time) {
	if since.IsZero() {
		return
	}
	ns := since.UnixNano()
	for {
		old := t.since.Load()
		if ns >= old || t.since.CompareAndSwap(old, ns) {
			return
		}
	}
}

// MergeLocal raises this instance's own rows to at least those given (its
// state from storage after a restart, or a previous config's tracker).
func (t *Tracker) MergeLocal(us []Usage) {
	for _, u := range us {
		if !u.LastUsed.IsZero() {
			t.Entry(u.UsageKey).merge(u)
		}
	}
}

// SetPeers replaces what other instances reported: their rows, and the
// earliest time one of them began observing (zero when none said).
func (t *Tracker) SetPeers(us []Usage, since time.Time) {
	peers := make(map[UsageKey]Usage, len(us))
	for _, u := range us {
		peers[u.UsageKey] = mergeUsage(peers[u.UsageKey], u)
	}
	t.mu.Lock()
	t.peers = peers
	t.mu.Unlock()
	if since.IsZero() {
		t.peerSince.Store(0)
	} else {
		t.peerSince.Store(since.UnixNano())
	}
}

// mergeUsage is the latest evidence of a and b for the same row.
func mergeUsage(a, b Usage) Usage {
	out := a
	out.UsageKey = b.UsageKey
	out.LastUsed = later(a.LastUsed, b.LastUsed)
	out.LastOK = later(a.LastOK, b.LastOK)
	if b.LastFailed.After(a.LastFailed) {
		out.LastFailed, out.LastFailure = b.LastFailed, b.LastFailure
	}
	out.Clients = mergeClients(a.Clients, b.Clients)
	return out
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Local is this instance's own rows, sorted; it is what gets persisted.
func (t *Tracker) Local() []Usage {
	t.mu.RLock()
	out := make([]Usage, 0, len(t.local))
	for k, e := range t.local {
		out = append(out, e.snapshot(k))
	}
	t.mu.RUnlock()
	sortUsage(out)
	return out
}

// Merged is the fleet's view: for each row the latest evidence of this
// instance and its peers, sorted by service, then hosts, store and key.
func (t *Tracker) Merged() []Usage {
	t.mu.RLock()
	m := make(map[UsageKey]Usage, len(t.local)+len(t.peers))
	for k, u := range t.peers {
		m[k] = u
	}
	for k, e := range t.local {
		m[k] = mergeUsage(m[k], e.snapshot(k))
	}
	t.mu.RUnlock()
	out := make([]Usage, 0, len(m))
	for _, u := range m {
		out = append(out, u)
	}
	sortUsage(out)
	return out
}

// TakeDirty reports whether anything was recorded since the last call.
func (t *Tracker) TakeDirty() bool { return t.dirty.Swap(false) }

// serviceRank orders services as the Kustom Portal lists them, then
// Unmatched, then anything else.
func serviceRank(s Service) int {
	for i, k := range Services {
		if k == s {
			return i
		}
	}
	if s == Unmatched {
		return len(Services)
	}
	return len(Services) + 1
}

// lessKey orders rows by service rank, then service, hosts, store and key.
func lessKey(a, b UsageKey) bool {
	if ra, rb := serviceRank(a.Service), serviceRank(b.Service); ra != rb {
		return ra < rb
	}
	for _, p := range [][2]string{{string(a.Service), string(b.Service)}, {a.FromHost, b.FromHost},
		{a.ToHost, b.ToHost}, {a.Credential, b.Credential}, {a.Key, b.Key}} {
		if p[0] != p[1] {
			return p[0] < p[1]
		}
	}
	return false
}

func sortUsage(us []Usage) {
	sort.Slice(us, func(i, j int) bool { return lessKey(us[i].UsageKey, us[j].UsageKey) })
}

// stateVersion marks the state file's shape. Files without it come from a
// kustom-shim that recorded no outcomes, stores or keys: their rows cannot
// say whether calls worked or who made them, so they are dropped, and the
// instance starts observing afresh rather than vouch for what it did not see.
const stateVersion = 2

// stateFile is what one instance writes to storage.
type stateFile struct {
	Version        int       `json:"version"`
	Instance       string    `json:"instance"`
	Written        time.Time `json:"written"`
	ObservingSince time.Time `json:"observing_since"`
	Usage          []Usage   `json:"usage"`
}

func encodeState(instance string, now, since time.Time, us []Usage) ([]byte, error) {
	return json.MarshalIndent(stateFile{Version: stateVersion, Instance: instance, Written: now.UTC(),
		ObservingSince: since.UTC(), Usage: us}, "", "  ")
}

// decodeState reads a state file; ok is false for a file of an older shape,
// whose evidence does not count (see stateVersion).
func decodeState(b []byte) (s stateFile, ok bool, err error) {
	if err = json.Unmarshal(b, &s); err != nil {
		return s, false, err
	}
	if s.Version < stateVersion {
		return stateFile{Instance: s.Instance, Written: s.Written}, false, nil
	}
	return s, true, nil
}
