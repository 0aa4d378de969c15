// Package shimtest runs a real Caddy server, with kustom-shim's modules, from
// a Caddyfile inside a test. Caddy holds one running config per process, so
// tests that use it must not run in parallel with each other.
package shimtest

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	// The standard modules and the shim's directives, as in the binary.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/kustomshim/kustomshim/caddyfile"
)

// Shim is a running Caddy.
type Shim struct {
	Dir       string // storage and log files live here
	AccessLog string // path for `log { output file … }` in a site
	ErrorLog  string // Caddy's default log (errors, warnings, module logs)
}

// New prepares a storage directory and log paths; nothing runs yet.
func New(t testing.TB) *Shim {
	t.Helper()
	// Not t.TempDir: certificate work Caddy started in the background may
	// still be writing for a moment after Stop, and t.TempDir's cleanup
	// fails the test on a directory that is not empty yet.
	dir, err := os.MkdirTemp("", "kustomshim-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if err = os.RemoveAll(dir); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("removing %s: %v", dir, err)
	})
	// Caddy's instance ID and autosave live in its data and config dirs;
	// keep them out of the real home directory.
	if tt, ok := t.(*testing.T); ok {
		tt.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
		tt.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	}
	return &Shim{Dir: dir, AccessLog: filepath.Join(dir, "access.log"), ErrorLog: filepath.Join(dir, "caddy.log")}
}

// Globals is the global options block every test config starts with: no
// admin endpoint unless asked for, storage in the test's directory, no
// attempt to touch the system trust store or port 80.
func (s *Shim) Globals(extra string) string { return s.GlobalsWithAdmin("off", extra) }

// GlobalsWithAdmin is Globals with the admin endpoint at addr.
func (s *Shim) GlobalsWithAdmin(addr, extra string) string {
	if extra != "" {
		extra = "\t" + extra + "\n"
	}
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
	skip_install_trust
	auto_https disable_redirects
	log default {
		output file %s
		format json
		level DEBUG
	}
%s}
`, addr, s.Dir, s.ErrorLog, extra)
}

// Adapt turns a Caddyfile into Caddy's JSON.
func Adapt(t testing.TB, caddyfile string) []byte {
	t.Helper()
	out, warns, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warns {
		t.Logf("adapt warning: %s:%d %s", w.File, w.Line, w.Message)
	}
	return out
}

// Start loads the Caddyfile (which should begin with s.Globals) and stops
// Caddy when the test ends. It is for a reload, on ports the running config
// already holds; a first start on ports of its own is StartPorts'.
func (s *Shim) Start(t testing.TB, caddyfile string) {
	t.Helper()
	if err := caddy.Load(Adapt(t, caddyfile), true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("stopping caddy: %v", err)
		}
	})
}

// LoadError adapts and loads caddyfile and returns the error Caddy gives.
func LoadError(t testing.TB, caddyfile string) error {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		return err
	}
	if err := caddy.Load(out, true); err != nil {
		return err
	}
	_ = caddy.Stop()
	return nil
}

// Logs returns the contents of a log file ("" if it does not exist yet).
func Logs(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// Client is an HTTP client that never follows redirects (the tests look at
// Location themselves) and never reuses a proxy from the environment.
func Client() *http.Client {
	return &http.Client{
		Timeout:       20 * time.Second,
		Transport:     &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// WaitFor polls cond until it holds or the deadline passes, and fails the
// test then. It is for a condition outside the test's control that nothing
// signals (a file Caddy writes in the background, a certificate it issues, a
// process starting); an event the test itself can see coming is waited for
// on a channel instead.
func WaitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(d, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// Poll is WaitFor that reports the timeout instead of failing: it tries cond
// every 20 ms until it holds (true) or d has passed (false).
func Poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Contains reports whether any of the needles occurs in hay (for leak checks).
func Contains(hay string, needles ...string) (string, bool) {
	for _, n := range needles {
		if n != "" && strings.Contains(hay, n) {
			return n, true
		}
	}
	return "", false
}
