package module

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `kustom` Caddy app: it owns the evidence (per row: last used,
// last worked, last failed and why, recent clients) that the kustom
// handlers record and the status page, the admin API and the metrics read,
// and keeps it in Caddy's storage so that it survives restarts and is shared
// by a fleet. Handlers load it on demand, so it needs no config of its own;
// the `kustom` global option sets the fields below.
type App struct {
	// How often this instance writes its evidence to storage and reads the
	// other instances'. Default: 5s. State is also written when the app
	// stops.
	FlushInterval caddy.Duration `json:"flush_interval,omitempty"`

	// Names this instance's state in shared storage. Default: Caddy's
	// instance ID (instance.uuid in its data directory), which differs per
	// machine; set it when several instances share a data directory.
	InstanceID string `json:"instance_id,omitempty"`

	tracker   *Tracker  // one per process across reloads; see Provision
	prev      *App      // the app this one replaced, restored if this one stops first
	running   bool      // between Start and Stop, under currentMu
	lastWrite time.Time // of this instance's state file
	storage   certmagic.Storage
	instance  string
	logger    *zap.Logger
	stop      chan struct{}
	done      chan struct{}
	manage    []managed // certificates to have Caddy's tls app manage at start

	oldStates  map[string]bool // state-file keys of an older shape, logged once (sync runs one at a time)
	gapNoticed bool
}

type managed struct {
	tls   *caddytls.TLS
	hosts []string
}

// manageOnStart asks for certificates for hosts once the config runs.
func (a *App) manageOnStart(t *caddytls.TLS, hosts []string) {
	a.manage = append(a.manage, managed{tls: t, hosts: hosts})
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "kustom", New: func() caddy.Module { return new(App) }}
}

// DefaultFlushInterval bounds how much evidence a crash can lose.
const DefaultFlushInterval = 5 * time.Second

// stateDir is where instances keep their state in Caddy's storage.
const stateDir = "kustom-shim/last-used"

var instanceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Provision sets up storage and the tracker.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.FlushInterval < 0 {
		return fmt.Errorf("flush_interval: must not be negative")
	}
	if a.FlushInterval > 0 && a.FlushInterval < caddy.Duration(time.Second) {
		// Every instance lists and reads its peers' state at this pace.
		return fmt.Errorf("flush_interval: %s is too short; storage is written and read at that pace (at least 1s)",
			time.Duration(a.FlushInterval))
	}
	if a.FlushInterval == 0 {
		a.FlushInterval = caddy.Duration(DefaultFlushInterval)
	}
	a.instance = a.InstanceID
	if a.instance == "" {
		id, err := caddy.InstanceID()
		if err != nil {
			return fmt.Errorf("instance_id: not set, and Caddy's instance ID is unavailable: %v", err)
		}
		a.instance = id.String()
	}
	if !instanceName.MatchString(a.instance) {
		return fmt.Errorf("instance_id: %q must be 1-128 letters, digits, '.', '_' or '-'", a.instance)
	}
	a.storage = ctx.Storage()
	// A reload records into the running config's tracker from the moment
	// this config's handlers exist (they may serve before this app
	// starts, and the old config's in-flight calls and draining tunnels
	// finish after): one tracker per process, so no call lands where
	// nobody reads and nothing is copied twice.
	if prev := currentApp(); prev != nil {
		a.tracker = prev.tracker
	} else {
		a.tracker = NewTracker(time.Now())
	}
	registerMetrics(ctx.GetMetricsRegistry())
	return nil
}

var (
	currentMu sync.Mutex
	current   *App // the running app; a reload's new app takes over from it
)

// currentApp is the running app, whose evidence the admin API and the
// evidence gauges (kustom_shim_last_*_timestamp_seconds,
// kustom_shim_observing_since_timestamp_seconds) report.
func currentApp() *App {
	currentMu.Lock()
	defer currentMu.Unlock()
	return current
}

// Start loads this instance's and its peers' state and begins writing.
func (a *App) Start() error {
	for _, m := range a.manage {
		names := make(map[string]struct{}, len(m.hosts))
		for _, n := range m.hosts {
			names[n] = struct{}{}
		}
		if err := m.tls.Manage(names); err != nil {
			return fmt.Errorf("intercept_connect: certificates: %v", err)
		}
	}
	currentMu.Lock()
	a.prev, current, a.running = current, a, true
	currentMu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	a.sync(ctx, false)
	cancel()

	a.stop, a.done = make(chan struct{}), make(chan struct{})
	go a.loop()
	return nil
}

// Stop writes the state one last time.
func (a *App) Stop() error {
	close(a.stop)
	<-a.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := a.sync(ctx, true)
	currentMu.Lock()
	a.running = false
	if current == a {
		// A reload that failed after this app started leaves the config
		// it replaced running: that one is current again.
		current = nil
		if a.prev != nil && a.prev.running {
			current = a.prev
		}
	}
	a.prev = nil
	currentMu.Unlock()
	return err
}

func (a *App) loop() {
	defer close(a.done)
	t := time.NewTicker(time.Duration(a.FlushInterval))
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(a.FlushInterval))
			_ = a.sync(ctx, false)
			cancel()
		}
	}
}

// Usage is the evidence of this instance and its peers sharing storage,
// for the status page and metrics.
func (a *App) Usage() []Usage { return a.tracker.Merged() }

// Report judges that evidence at now over window.
func (a *App) Report(now time.Time, window time.Duration) StatusReport {
	return BuildStatus(a.tracker.Merged(), a.tracker.FleetObservingSince(), now, window)
}

// Tracker is where handlers record calls.
func (a *App) Tracker() *Tracker { return a.tracker }

func (a *App) ownKey() string { return path.Join(stateDir, a.instance+".json") }

// sync reads every instance's state from storage (its own to survive a
// restart or a lost write, the others' to show the fleet) and writes its
// own when something changed or force is set. Storage trouble is logged,
// never fatal: the shim's job is proxying.
func (a *App) sync(ctx context.Context, force bool) error {
	now := time.Now()
	keys, err := a.storage.List(ctx, stateDir, false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.logger.Warn("listing last-used state in storage", zap.Error(err))
	}
	var peers []Usage
	var peerSince time.Time
	for _, k := range keys {
		if !strings.HasSuffix(k, ".json") {
			continue
		}
		b, err := a.storage.Load(ctx, k)
		if err != nil {
			a.logger.Warn("loading last-used state", zap.String("key", k), zap.Error(err))
			continue
		}
		st, current, err := decodeState(b)
		if err != nil {
			a.logger.Warn("last-used state is not valid JSON; ignoring it", zap.String("key", k), zap.Error(err))
			continue
		}
		if !current {
			// Written by a shim that recorded no outcomes: its rows cannot
			// vouch for a switch. Our own is overwritten at the next write.
			a.noticeOldState(k)
			continue
		}
		fresh := a.fresh(st.Written, now)
		if k == a.ownKey() {
			a.tracker.MergeLocal(st.Usage)
			if fresh {
				a.tracker.KeepObservingSince(st.ObservingSince)
			} else {
				a.noticeGap(st.Written, now)
			}
			continue
		}
		// A peer's rows count whatever their age (they can only add calls
		// and blockers); its observation only while it is alive: a retired
		// or stopped instance's file says nothing about the time since.
		peers = append(peers, st.Usage...)
		if s := st.ObservingSince; fresh && !s.IsZero() && (peerSince.IsZero() || s.Before(peerSince)) {
			peerSince = s
		}
	}
	a.tracker.SetPeers(peers, peerSince)

	// The file's written time is this instance's heartbeat, so it is
	// rewritten at least every stateHeartbeat even when nothing happened.
	if !a.tracker.TakeDirty() && !force && now.Sub(a.lastWrite) < stateHeartbeat {
		return nil
	}
	b, err := encodeState(a.instance, now, a.tracker.ObservingSince(), a.tracker.Local())
	if err != nil {
		return err
	}
	if err := a.storage.Store(ctx, a.ownKey(), b); err != nil {
		a.tracker.dirty.Store(true) // try again next time
		a.logger.Error("writing last-used state to storage", zap.Error(err))
		return err
	}
	a.lastWrite = now
	return nil
}

// Observation must be unbroken: an instance that was down, or whose file
// was not rewritten, for longer than ObservationGap did not see the calls
// of that time, so its earlier observation no longer counts.
const (
	ObservationGap = 15 * time.Minute
	stateHeartbeat = ObservationGap / 3
)

// fresh tells whether a state file written at written still vouches for
// unbroken observation at now: not older than the gap (three flushes at
// least), and not from a clock running ahead by more than that.
func (a *App) fresh(written, now time.Time) bool {
	tolerance := max(ObservationGap, 3*time.Duration(a.FlushInterval))
	return !written.IsZero() && now.Sub(written) <= tolerance && written.Sub(now) <= tolerance
}

// noticeGap logs, once, that this instance's own observation restarts.
func (a *App) noticeGap(written, now time.Time) {
	if a.gapNoticed {
		return
	}
	a.gapNoticed = true
	a.logger.Info("this instance's state was last written too long ago: its observation of calls starts afresh",
		zap.Time("last_written", written), zap.Duration("gap", now.Sub(written)), zap.Duration("allowed", ObservationGap))
}

// noticeOldState logs, once per key and app, that a state file of an older
// shape was passed over.
func (a *App) noticeOldState(key string) {
	if a.oldStates[key] {
		return
	}
	if a.oldStates == nil {
		a.oldStates = map[string]bool{}
	}
	a.oldStates[key] = true
	a.logger.Info("last-used state from an older kustom-shim has no call outcomes; its rows do not count and observing starts afresh",
		zap.String("key", key))
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
