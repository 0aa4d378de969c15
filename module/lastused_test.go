package module

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

var rowA = UsageKey{Service: Checkout, FromHost: LocalHost, ToHost: KustomProduction, Credential: "shop1", Key: KeySwapped}

func TestTrackerEvidence(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	tr := NewTracker(t0)
	e := tr.Entry(rowA)
	if tr.Entry(rowA) != e {
		t.Fatal("a row's entry is not reused")
	}
	e.Used(t0.Add(time.Second), "kco_rest_php/4.0")
	e.OK(t0.Add(2 * time.Second))
	e.Used(t0.Add(3*time.Second), "kco_rest_php/4.0")
	e.Failed(t0.Add(4*time.Second), FailureUnreachable)
	e.Used(t0.Add(5*time.Second), "curl/8.14")
	e.Failed(t0.Add(6*time.Second), FailureKeyRejected)
	e.Failed(t0.Add(time.Second), Failure5xx) // older: changes nothing
	e.Used(t0, "older call finishing late")   // last_used never goes back

	got := tr.Local()
	if len(got) != 1 {
		t.Fatalf("rows %+v", got)
	}
	u := got[0]
	if u.UsageKey != rowA || !u.LastUsed.Equal(t0.Add(5*time.Second)) || !u.LastOK.Equal(t0.Add(2*time.Second)) ||
		!u.LastFailed.Equal(t0.Add(6*time.Second)) || u.LastFailure != FailureKeyRejected {
		t.Errorf("evidence %+v", u)
	}
	var agents []string
	for _, c := range u.Clients {
		agents = append(agents, c.UserAgent)
	}
	if strings.Join(agents, "|") != "older call finishing late|curl/8.14|kco_rest_php/4.0" {
		t.Errorf("clients %q", agents)
	}
	if !tr.TakeDirty() || tr.TakeDirty() {
		t.Error("dirty flag")
	}
}

func TestClientsBoundedAndClean(t *testing.T) {
	tr := NewTracker(time.Now())
	e := tr.Entry(rowA)
	t0 := time.Now()
	for i := 0; i < 20; i++ {
		e.Used(t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("app-%d", i))
	}
	e.Used(t0.Add(time.Minute), "evil\r\nX-Injected: 1\x00\xff"+strings.Repeat("a", 500))
	e.Used(t0.Add(2*time.Minute), "") // no User-Agent: nothing to list
	cs := tr.Local()[0].Clients
	if len(cs) != MaxClients {
		t.Fatalf("%d clients, want %d", len(cs), MaxClients)
	}
	if ua := cs[0].UserAgent; len(ua) != maxUserAgent || strings.ContainsAny(ua, "\r\n\x00\xff") || !strings.HasPrefix(ua, "evilX-Injected: 1aaa") {
		t.Errorf("cleaned agent %q (%d)", ua, len(ua))
	}
	if cs[1].UserAgent != "app-19" || cs[4].UserAgent != "app-16" {
		t.Errorf("clients %+v", cs)
	}
}

func TestTrackerPeersAndObservingSince(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	tr := NewTracker(t0)
	tr.Entry(rowA).Used(t0.Add(time.Minute), "a")
	tr.Entry(rowA).OK(t0.Add(time.Minute))
	rowB := rowA
	rowB.FromHost = "api.klarna.com"
	peer := []Usage{
		{UsageKey: rowA, LastUsed: t0.Add(2 * time.Minute), LastFailed: t0.Add(2 * time.Minute), LastFailure: Failure5xx,
			Clients: []Client{{UserAgent: "b", Seen: t0.Add(2 * time.Minute)}}},
		{UsageKey: rowB, LastUsed: t0.Add(time.Hour)}, // a peer whose clock runs ahead
	}
	tr.SetPeers(peer, t0.Add(-24*time.Hour))
	m := tr.Merged()
	if len(m) != 2 || m[0].UsageKey != rowB || m[1].UsageKey != rowA {
		t.Fatalf("merged %+v", m)
	}
	a := m[1]
	if !a.LastUsed.Equal(t0.Add(2*time.Minute)) || !a.LastOK.Equal(t0.Add(time.Minute)) || a.LastFailure != Failure5xx ||
		len(a.Clients) != 2 || a.Clients[0].UserAgent != "b" {
		t.Errorf("merged row %+v", a)
	}
	if got := tr.FleetObservingSince(); !got.Equal(t0.Add(-24 * time.Hour)) {
		t.Errorf("fleet observing since %v", got)
	}
	if got := tr.ObservingSince(); !got.Equal(t0) {
		t.Errorf("own observing since %v", got)
	}
	// A peer that claims a later start does not shorten the fleet's.
	tr.SetPeers(peer, t0.Add(time.Hour))
	if got := tr.FleetObservingSince(); !got.Equal(t0) {
		t.Errorf("fleet observing since %v with a later peer", got)
	}
	tr.KeepObservingSince(t0.Add(-time.Hour)) // own state read back: earlier wins
	tr.KeepObservingSince(t0.Add(time.Hour))  // later never does
	if got := tr.ObservingSince(); !got.Equal(t0.Add(-time.Hour)) {
		t.Errorf("kept observing since %v", got)
	}
	// Local state holds only this instance's rows.
	if l := tr.Local(); len(l) != 1 || !l[0].LastFailed.IsZero() {
		t.Errorf("local %+v", l)
	}
}

func TestStateFileRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	us := []Usage{{UsageKey: rowA, LastUsed: t0, LastOK: t0, Clients: []Client{{UserAgent: "x", Seen: t0}}}}
	b, err := encodeState("i1", t0, t0.Add(-time.Hour), us)
	if err != nil {
		t.Fatal(err)
	}
	st, ok, err := decodeState(b)
	if err != nil || !ok || st.Instance != "i1" || !st.ObservingSince.Equal(t0.Add(-time.Hour)) || len(st.Usage) != 1 ||
		st.Usage[0].UsageKey != rowA || st.Usage[0].Clients[0].UserAgent != "x" {
		t.Errorf("round trip %+v %v %v", st, ok, err)
	}
	// A state file of the shape before outcomes were recorded does not count.
	old := `{"instance":"i0","written":"2026-04-01T00:00:00Z","usage":[{"service":"checkout","from_host":"api.kustom.co","to_host":"api.kustom.co","last_used":"2026-04-01T00:00:00Z"}]}`
	st, ok, err = decodeState([]byte(old))
	if err != nil || ok || len(st.Usage) != 0 {
		t.Errorf("old file %+v %v %v", st, ok, err)
	}
	if _, _, err := decodeState([]byte("{")); err == nil {
		t.Error("broken file accepted")
	}
}

// Concurrent recording from many requests keeps every row and the latest
// times (run with -race).
func TestTrackerConcurrent(t *testing.T) {
	tr := NewTracker(time.Now())
	t0 := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				k := rowA
				k.Credential = fmt.Sprintf("shop%d", i%10)
				e := tr.Entry(k)
				at := t0.Add(time.Duration(i) * time.Millisecond)
				e.Used(at, fmt.Sprintf("agent-%d", g))
				if i%3 == 0 {
					e.Failed(at, FailureTimeout)
				} else {
					e.OK(at)
				}
				if i%50 == 0 {
					_ = tr.Merged()
				}
			}
		}(g)
	}
	wg.Wait()
	rows := tr.Local()
	if len(rows) != 10 {
		t.Fatalf("%d rows", len(rows))
	}
	for _, u := range rows {
		if u.LastUsed.Before(t0.Add(490*time.Millisecond)) || len(u.Clients) != MaxClients {
			t.Errorf("row %s: %+v", u.Credential, u)
		}
	}
}
