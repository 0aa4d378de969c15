package module

import (
	"context"
	"path"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// testApp is an App on file storage in a temporary directory, as Provision
// would set it up, without a Caddy config.
func testApp(t *testing.T, instance string, storage certmagic.Storage, since time.Time) *App {
	t.Helper()
	return &App{FlushInterval: caddy.Duration(time.Second), instance: instance, storage: storage,
		logger: zap.NewNop(), tracker: NewTracker(since)}
}

func writeState(t *testing.T, s certmagic.Storage, instance string, written, since time.Time, us []Usage) {
	t.Helper()
	b, err := encodeState(instance, written, since, us)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Store(context.Background(), path.Join(stateDir, instance+".json"), b); err != nil {
		t.Fatal(err)
	}
}

// Observation must be unbroken: a retired peer's file, a peer clock far
// ahead, or this instance's own file left from before a long downtime never
// lend it evidence; a live peer's does.
func TestAppObservationMustBeUnbroken(t *testing.T) {
	now := time.Now()
	row := Usage{UsageKey: UsageKey{Service: Checkout, FromHost: "api.klarna.com", ToHost: KustomProduction, Credential: "shop1", Key: KeySwapped},
		LastUsed: now.Add(-24 * time.Hour), LastOK: now.Add(-24 * time.Hour)}
	cases := []struct {
		name      string
		peer      bool
		written   time.Time
		since     time.Time
		wantSince time.Time // zero: this instance's own start (now)
	}{
		{"a live peer that has observed for 30 days", true, now.Add(-time.Minute), now.Add(-30 * 24 * time.Hour), now.Add(-30 * 24 * time.Hour)},
		{"a peer retired 30 days ago", true, now.Add(-30 * 24 * time.Hour), now.Add(-60 * 24 * time.Hour), time.Time{}},
		{"a peer whose clock runs a day ahead", true, now.Add(24 * time.Hour), now.Add(-60 * 24 * time.Hour), time.Time{}},
		{"our own file, restarted after a minute", false, now.Add(-time.Minute), now.Add(-30 * 24 * time.Hour), now.Add(-30 * 24 * time.Hour)},
		{"our own file, restarted after two weeks down", false, now.Add(-14 * 24 * time.Hour), now.Add(-30 * 24 * time.Hour), time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			storage := &certmagic.FileStorage{Path: t.TempDir()}
			a := testApp(t, "me", storage, now)
			name := "me"
			if c.peer {
				name = "peer"
			}
			writeState(t, storage, name, c.written, c.since, []Usage{row})
			if err := a.sync(context.Background(), false); err != nil {
				t.Fatal(err)
			}
			want := c.wantSince
			if want.IsZero() {
				want = now
			}
			if got := a.tracker.FleetObservingSince(); !got.Equal(want.UTC().Round(0)) && !got.Equal(want) {
				t.Errorf("fleet observing since %v, want %v", got, want)
			}
			// The rows count whatever the file's age: they can only add
			// calls and blockers.
			if m := a.tracker.Merged(); len(m) != 1 || m[0].UsageKey != row.UsageKey {
				t.Errorf("rows %+v", m)
			}
		})
	}
}

// The state file is the instance's heartbeat: rewritten every
// stateHeartbeat even with nothing new, so that an idle live instance never
// reads as retired to its peers.
func TestAppHeartbeat(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	a := testApp(t, "me", storage, time.Now())
	ctx := context.Background()
	key := path.Join(stateDir, "me.json")
	if err := a.sync(ctx, false); err != nil { // the first write records when observing began
		t.Fatal(err)
	}
	first, err := storage.Stat(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := a.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if again, _ := storage.Stat(ctx, key); !again.Modified.Equal(first.Modified) {
		t.Error("rewritten with nothing new and the heartbeat not due")
	}
	a.lastWrite = time.Now().Add(-stateHeartbeat - time.Second)
	if err := a.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if again, _ := storage.Stat(ctx, key); again.Modified.Equal(first.Modified) {
		t.Error("not rewritten when the heartbeat was due")
	}
}

// A reload that fails after the new app started stops it; the config it
// replaced keeps running and must stay current (its evidence on the admin
// API and the metrics).
func TestAppStopRestoresTheRunningApp(t *testing.T) {
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	old := testApp(t, "me", storage, time.Now())
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	next := testApp(t, "me", storage, time.Now())
	next.tracker = old.tracker // as Provision adopts it
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	if currentApp() != next {
		t.Fatal("the new app is not current")
	}
	if err := next.Stop(); err != nil {
		t.Fatal(err)
	}
	if currentApp() != old {
		t.Errorf("after the new app stopped first, current is %p, want the running %p", currentApp(), old)
	}
	if err := old.Stop(); err != nil {
		t.Fatal(err)
	}
	if currentApp() != nil {
		t.Error("an app is current after every app stopped")
	}
}
