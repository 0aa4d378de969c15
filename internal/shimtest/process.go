package shimtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Output collects what a process writes to stdout and stderr, and lets a
// test wait for a line in it without polling.
type Output struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{} // closed and replaced on every write
}

// NewOutput returns an empty Output, to set as a command's Stdout and Stderr.
func NewOutput() *Output { return &Output{changed: make(chan struct{})} }

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

// String is everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// Wait waits until cond holds for the output, each time something is
// written, until done is closed or d has passed; it returns the output and
// whether cond held.
func (o *Output) Wait(d time.Duration, done <-chan struct{}, cond func(string) bool) (string, bool) {
	timeout := time.After(d)
	for {
		o.mu.Lock()
		s, changed := o.b.String(), o.changed
		o.mu.Unlock()
		if cond(s) {
			return s, true
		}
		select {
		case <-changed:
		case <-done:
			return o.String(), cond(o.String())
		case <-timeout:
			return s, false
		}
	}
}

// Process is a kustom-shim binary running a Caddyfile, with HOME and the XDG
// directories in a directory of its own.
type Process struct {
	Cmd    *exec.Cmd
	Home   string
	Ports  []int   // the ports its Caddyfile names
	Out    *Output // its stdout and stderr
	exited chan struct{}
	once   sync.Once
}

// StartProcess runs `bin run` on the Caddyfile config(ports), with the ports
// given (each 0 replaced by one from Port) and env added to HOME and the XDG
// variables, and waits until Caddy says it serves the config. When the
// process instead exits because a port was taken before it could bind it, it
// is started again on new ports (see Port). It is stopped when the test ends.
func StartProcess(t testing.TB, bin string, env []string, ports []int, config func(ports []int) string) *Process {
	t.Helper()
	ports = freshPorts(t, ports)
	home := t.TempDir()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	for try := 1; ; try++ {
		if err := os.WriteFile(path, []byte(config(ports)), 0o600); err != nil {
			t.Fatal(err)
		}
		p := &Process{Home: home, Ports: ports, Out: NewOutput(), exited: make(chan struct{})}
		p.Cmd = exec.Command(bin, "run", "--config", path)
		p.Cmd.Env = append([]string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}, env...)
		p.Cmd.Stdout, p.Cmd.Stderr = p.Out, p.Out
		if err := p.Cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = p.Cmd.Wait(); close(p.exited) }()
		t.Cleanup(p.Stop)
		out, ok := p.Out.Wait(60*time.Second, p.exited, func(s string) bool {
			return strings.Contains(s, "serving initial configuration")
		})
		switch {
		case ok:
			return p
		case p.Exited() && strings.Contains(out, "address already in use") && try < portTries:
			t.Logf("a port was taken before kustom-shim bound it: starting it again on new ports")
			ports = freshPorts(t, make([]int, len(ports)))
		case p.Exited():
			t.Fatalf("kustom-shim exited (%v) before serving its config:\n%s", p.Cmd.ProcessState, out)
		default:
			t.Fatalf("kustom-shim did not serve its config within 60 s:\n%s", out)
		}
	}
}

// Exited tells whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Stop stops the process as an operator would (SIGINT: a graceful stop,
// which writes the last-used state), killing it if it has not ended within
// 10 s. It may be called again.
func (p *Process) Stop() {
	p.once.Do(func() {
		_ = p.Cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-p.exited
		}
	})
}
