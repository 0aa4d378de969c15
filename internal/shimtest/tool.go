package shimtest

import (
	"os"
	"os/exec"
	"testing"
)

// Tool finds a Debian tool a test needs (the first of names on PATH). A
// developer without it gets a skip that says what to install; under CI,
// where .ci/run installs every one of them, a missing tool fails the test,
// so that a broken install cannot pass as a green run.
func Tool(t testing.TB, pkg string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := names[0] + " is not installed (apt-get install " + pkg + ")"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + ": .ci/run installs it")
	}
	t.Skip(msg + "; skipping")
	return ""
}
