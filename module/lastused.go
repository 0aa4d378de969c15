package module

import (
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// UsageKey is one row of the switch report: a service called on one host and
// sent to another. All three fields are bounded labels (see Route).
type UsageKey struct {
	Service  Service `json:"service"`
	FromHost string  `json:"from_host"`
	ToHost   string  `json:"to_host"`
}

// Usage is when a UsageKey was last seen.
type Usage struct {
	UsageKey
	LastUsed time.Time `json:"last_used"`
}

// Tracker keeps the last-used time per UsageKey. The hot path (Touch) takes
// a read lock and does one atomic store; the write lock is taken only the
// first time a key is seen, and keys are bounded by the config.
type Tracker struct {
	mu    sync.RWMutex
	local map[UsageKey]*atomic.Int64 // unix nanoseconds, this instance's own
	peers map[UsageKey]int64         // other instances', from shared storage
	dirty atomic.Bool
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker {
	return &Tracker{local: map[UsageKey]*atomic.Int64{}, peers: map[UsageKey]int64{}}
}

// Touch records a call at now.
func (t *Tracker) Touch(k UsageKey, now time.Time) {
	t.mu.RLock()
	v := t.local[k]
	t.mu.RUnlock()
	if v == nil {
		t.mu.Lock()
		if v = t.local[k]; v == nil {
			v = new(atomic.Int64)
			t.local[k] = v
		}
		t.mu.Unlock()
	}
	ns := now.UnixNano()
	for {
		old := v.Load()
		if ns <= old || v.CompareAndSwap(old, ns) {
			break
		}
	}
	t.dirty.Store(true)
}

// MergeLocal raises this instance's own entries to at least those given (its
// state from storage after a restart, or a previous config's tracker).
func (t *Tracker) MergeLocal(us []Usage) {
	for _, u := range us {
		if !u.LastUsed.IsZero() {
			t.Touch(u.UsageKey, u.LastUsed)
		}
	}
}

// SetPeers replaces what other instances reported.
func (t *Tracker) SetPeers(us []Usage) {
	peers := make(map[UsageKey]int64, len(us))
	for _, u := range us {
		if ns := u.LastUsed.UnixNano(); ns > peers[u.UsageKey] {
			peers[u.UsageKey] = ns
		}
	}
	t.mu.Lock()
	t.peers = peers
	t.mu.Unlock()
}

// Local is this instance's own state, sorted; it is what gets persisted.
func (t *Tracker) Local() []Usage {
	t.mu.RLock()
	out := make([]Usage, 0, len(t.local))
	for k, v := range t.local {
		out = append(out, Usage{UsageKey: k, LastUsed: time.Unix(0, v.Load()).UTC()})
	}
	t.mu.RUnlock()
	sortUsage(out)
	return out
}

// Merged is the fleet's view: for each key the latest of this instance and
// its peers, sorted by service, then hosts.
func (t *Tracker) Merged() []Usage {
	t.mu.RLock()
	m := make(map[UsageKey]int64, len(t.local)+len(t.peers))
	for k, ns := range t.peers {
		m[k] = ns
	}
	for k, v := range t.local {
		if ns := v.Load(); ns > m[k] {
			m[k] = ns
		}
	}
	t.mu.RUnlock()
	out := make([]Usage, 0, len(m))
	for k, ns := range m {
		out = append(out, Usage{UsageKey: k, LastUsed: time.Unix(0, ns).UTC()})
	}
	sortUsage(out)
	return out
}

// TakeDirty reports whether anything was touched since the last call.
func (t *Tracker) TakeDirty() bool { return t.dirty.Swap(false) }

func sortUsage(us []Usage) {
	rank := map[Service]int{}
	for i, s := range Services {
		rank[s] = i
	}
	sort.Slice(us, func(i, j int) bool {
		a, b := us[i], us[j]
		ra, oka := rank[a.Service]
		rb, okb := rank[b.Service]
		if !oka {
			ra = len(Services)
		}
		if !okb {
			rb = len(Services)
		}
		if ra != rb {
			return ra < rb
		}
		if a.FromHost != b.FromHost {
			return a.FromHost < b.FromHost
		}
		return a.ToHost < b.ToHost
	})
}

// stateFile is what one instance writes to storage.
type stateFile struct {
	Instance string    `json:"instance"`
	Written  time.Time `json:"written"`
	Usage    []Usage   `json:"usage"`
}

func encodeState(instance string, now time.Time, us []Usage) ([]byte, error) {
	return json.MarshalIndent(stateFile{Instance: instance, Written: now.UTC(), Usage: us}, "", "  ")
}

func decodeState(b []byte) (stateFile, error) {
	var s stateFile
	err := json.Unmarshal(b, &s)
	return s, err
}
