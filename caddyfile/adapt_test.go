package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	// The standard modules, as in the binary, and the package under test,
	// which registers the kustom directive (and, through it, the module).
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/kustomshim/kustomshim/caddyfile"
)

// update rewrites the JSON half of every golden file from what the adapter
// produces now: go test ./caddyfile -run TestAdapt -update. Read the diff
// before committing it.
var update = flag.Bool("update", false, "rewrite the expected JSON in testdata/*.caddyfiletest from the actual output")

// goldenSeparator splits a golden file: the Caddyfile above, the JSON below.
const goldenSeparator = "----------"

var windowsNewlines = regexp.MustCompile(`\r?\n`)

// exampleGolden holds a copy of the repository's Caddyfile.example above its
// separator: the test fails when the copy is stale, and -update refreshes it
// along with the JSON.
const (
	exampleGolden = "caddyfile_example"
	examplePath   = "../Caddyfile.example"
)

// TestAdapt adapts every testdata/*.caddyfiletest Caddyfile and compares the
// result with the JSON below its separator line, as Caddy's own
// caddytest/integration/caddyfile_adapt_test.go does.
func TestAdapt(t *testing.T) {
	eachGolden(t, func(t *testing.T, path, data, caddyfile, expected string) {
		if strings.TrimSuffix(filepath.Base(path), ".caddyfiletest") == exampleGolden {
			example, err := os.ReadFile(examplePath)
			if err != nil {
				t.Fatalf("%s copies %s: %v", path, examplePath, err)
			}
			want := strings.TrimSpace(windowsNewlines.ReplaceAllString(string(example), "\n")) + "\n"
			if caddyfile != want {
				if !*update {
					t.Fatalf("%s is not a copy of %s any more; run with -update and check the JSON", path, examplePath)
				}
				caddyfile = want
			}
		}
		if *update {
			actual := adaptIndented(t, caddyfile)
			out := caddyfile + goldenSeparator + "\n" + actual + "\n"
			if out != data {
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("updated %s", path)
			}
			return
		}
		if !caddytest.CompareAdapt(t, path, caddyfile, "caddyfile", expected) {
			t.Errorf("%s: adapted JSON differs from the golden file (see the diff above; run with -update to accept it)", path)
		}
	})
}

// eachGolden runs check as a subtest for every testdata/*.caddyfiletest,
// with the file's contents split at its separator.
func eachGolden(t *testing.T, check func(t *testing.T, path, data, caddyfile, expected string)) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.caddyfiletest files")
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, err := splitGolden(string(data))
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			check(t, path, string(data), caddyfile, expected)
		})
	}
}

// splitGolden returns the Caddyfile (ending in one newline) and the expected
// JSON (trimmed) of a golden file.
func splitGolden(data string) (caddyfile, expected string, err error) {
	data = windowsNewlines.ReplaceAllString(data, "\n")
	lines := strings.Split(data, "\n")
	for i, l := range lines {
		if strings.TrimRight(l, " \t") == goldenSeparator {
			caddyfile = strings.TrimSpace(strings.Join(lines[:i], "\n")) + "\n"
			expected = strings.TrimSpace(strings.Join(lines[i+1:], "\n"))
			return caddyfile, expected, nil
		}
	}
	return "", "", errNoSeparator
}

var errNoSeparator = errors.New("no line " + goldenSeparator + " between the Caddyfile and the JSON")

// adaptIndented adapts caddyfile and indents the JSON as CompareAdapt does.
func adaptIndented(t *testing.T, caddyfile string) string {
	t.Helper()
	out, warns, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warns {
		t.Logf("warning: line %d: %s: %s", w.Line, w.Directive, w.Message)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
