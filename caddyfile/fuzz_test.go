package caddyfile_test

// Fuzz targets for the Caddyfile adapter (issue 6). The f.Add seeds and the
// checked-in corpus under testdata/fuzz/<Name>/ run as ordinary tests with
// `go test`; `go test -fuzz '^FuzzName$'` explores.

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/kustomshim/kustomshim/caddyfile"
)

// fzMarker stands for a secret: when it is only ever a credential's secret
// value, no adapter error or warning may contain it.
const fzMarker = "SECRETMARK"

func fzAdapt(caddyfile string) ([]byte, []caddyconfig.Warning, error) {
	return caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
}

// fzHermetic keeps a fuzzed Caddyfile from importing files outside the empty
// directory the target runs in (import /dev/zero would never end).
func fzHermetic(t *testing.T, text string) {
	if strings.Contains(text, "import") && strings.ContainsAny(text, `/\*?[~$`) {
		t.Skip("import of a path")
	}
}

// FuzzCaddyfile: text as the body of a kustom block in a site (whole=false)
// or as a whole Caddyfile (whole=true). Adapting never panics, and what it
// produces is JSON; a kustom block that adapts is in the output.
func FuzzCaddyfile(f *testing.F) {
	f.Chdir(f.TempDir())
	for _, s := range []struct {
		text  string
		whole bool
	}{
		{"", false},
		{"default_target playground", false},
		{"default_target", false},
		{"default_target production playground", false},
		{"map api.klarna.com api.playground.kustom.co\nmap API.Klarna.com. api.kustom.co", false},
		{"map api.klarna.com", false},
		{"unmatched passthrough https://api.klarna.com", false},
		{"unmatched reject extra", false},
		{"unknown_credentials keep", false},
		{"max_request_body 1MiB", false},
		{"max_request_body 0", false},
		{"max_request_body 99999999999999999999EiB", false},
		{"upstream https://api.kustom.co", false},
		{"transport http {\n\tdial_timeout 5s\n\ttls_insecure_skip_verify\n}", false},
		{"transport fastcgi", false},
		{"transport http {\n\tdial_timeout\n}", false},
		{"credential shop1 {\n\tklarna_username K123456_abcd12345\n\tklarna_password {env.KLARNA_PW}\n\tkustom_api_key {env.KUSTOM_KEY}\n}", false},
		{"credential shop1 {\n\tklarna_username K1\n\tklarna_password_hash $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG\n\tkustom_username PM1\n\tkustom_password {env.KPW}\n}", false},
		{"credential {\n}", false},
		{"credential shop1 {\n\tklarna_username\n}", false},
		{"credential shop1 {\n\tklarna_username a\n}\ncredential shop1 {\n\tklarna_username b\n}", false},
		{"credential shop1 shop2 {\n}", false},
		{"}\n}\nexample.com {\n\tkustom {", false},
		{"{", false},
		{"}", false},
		{"\"unterminated", false},
		{"heredoc <<EOF\nx\nEOF", false},
		{"{$HOME}", false},
		{"unknown_option x", false},
		{"kustom_status", false},
		{"\u00e9\u00e8 \u2028 \x00", false},
		{strings.Repeat("map a.example b.example\n", 200), false},
		{":8080 {\n\tkustom\n}", true},
		{"{\n\tkustom {\n\t\tflush_interval 10s\n\t\tinstance_id a\n\t}\n}\n:8080 {\n\tkustom_status /kustom/status {\n\t\twindow 7d\n\t}\n\tkustom\n}", true},
		{"{\n\tkustom arg\n}", true},
		{"{\n\tkustom {\n\t\tflush_interval 1ms\n\t}\n}", true},
		{"(snip) {\n\tkustom {\n\t\tdefault_target playground\n\t}\n}\n:8080 {\n\timport snip\n}", true},
		{":8080 {\n\tkustom /checkout/* {\n\t\tdefault_target none\n\t}\n\tkustom @m\n\t@m path /x\n}", true},
		{":8080 {\n\tkustom_status {\n\t\twindow -1s\n\t}\n}", true},
		{"", true},
	} {
		f.Add(s.text, s.whole)
	}
	f.Fuzz(func(t *testing.T, text string, whole bool) {
		fzHermetic(t, text)
		cf := text
		if !whole {
			cf = ":8080 {\n\tkustom {\n" + text + "\n\t}\n}\n"
		}
		out, _, err := fzAdapt(cf)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("adapted to invalid JSON:\n%s\n---\n%s", cf, out)
		}
		if !whole && !strings.Contains(string(out), `"handler":"kustom"`) {
			t.Fatalf("the kustom block is missing from the adapted config:\n%s\n---\n%s", cf, out)
		}
	})
}

// fzCredentialOptions are the options of a credential block; the first three
// hold secrets.
var fzCredentialOptions = []string{
	"klarna_password", "kustom_password", "kustom_api_key",
	"klarna_password_hash", "kustom_username", "klarna_username",
}

// fzSoleValue reports whether value, written after option on a line of its
// own, is exactly one token of that line and leaves the next line alone
// (no unterminated quote or heredoc swallowing it, no comment, no second
// argument), and that this token holds the marker.
func fzSoleValue(option, value string) bool {
	if strings.Contains(value, "{$") {
		return false // expanded before lexing, possibly across lines
	}
	toks, err := caddyfile.Tokenize([]byte(option+" "+value+"\nNEXTLINE\n"), "Caddyfile")
	return err == nil && len(toks) == 3 && toks[0].Text == option &&
		strings.Contains(toks[1].Text, fzMarker) && toks[2].Text == "NEXTLINE" &&
		toks[2].Line > toks[0].Line
}

// FuzzCaddyfileSecrets: a credential with option set to value, then extra
// lines. Whatever happens, adapting never panics and a success is JSON; and
// when the marker is nowhere but in the value of a secret option, no error
// or warning contains it.
func FuzzCaddyfileSecrets(f *testing.F) {
	f.Chdir(f.TempDir())
	for _, s := range []struct {
		option       uint8
		value, extra string
	}{
		{0, "SECRETMARK", ""},
		{0, "SECRETMARK", "kustom_api_key {env.K}"},
		{1, "SECRETMARK", "kustom_username PM1"},
		{2, "SECRETMARK", "klarna_password {env.P}"},
		{2, "kco_test_api_SECRETMARK", "klarna_password_hash $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG"},
		{0, "\"SECRET MARK SECRETMARK\"", ""},
		{0, "`SECRETMARK`", "bogus_option"},
		{1, "{env.SECRETMARK}", "kustom_password {env.OTHER}"},
		{2, "SECRETMARK{", "}"},
		{2, "SECRETMARK", "{"},
		{2, "SECRETMARK", "}\n}\n}\n}"},
		{2, "SECRETMARK", "}\nupstream"},
		{2, "SECRETMARK", "}\n}\nkustom_api_key"},
		{0, "SECRETMARK", "klarna_password again"},
		{0, "SECRETMARK extra", ""},
		{0, "SECRETMARK\nnext", ""},
		{0, "\"SECRETMARK", "}"},
		{0, "<<EOF", "SECRETMARK\nEOF"},
		{1, "{$NOPE:SECRETMARK}", ""},
		{4, "SECRETMARK", ""},
		{5, "SECRETMARK", ""},
		{3, "SECRETMARK", ""},
		{0, "S\u00e9CRETMARK\u2028", "\x00"},
	} {
		f.Add(s.option, s.value, s.extra)
	}
	f.Fuzz(func(t *testing.T, option uint8, value, extra string) {
		fzHermetic(t, value+"\n"+extra)
		opt := fzCredentialOptions[int(option)%len(fzCredentialOptions)]
		var b strings.Builder
		b.WriteString(":8080 {\n\tkustom {\n\t\tcredential shop1 {\n")
		if opt != "klarna_username" {
			b.WriteString("\t\t\tklarna_username K123456_abcd12345\n")
		}
		b.WriteString("\t\t\t" + opt + " " + value + "\n")
		b.WriteString(extra + "\n\t\t}\n\t}\n}\n")
		cf := b.String()

		out, warnings, err := fzAdapt(cf)
		if err == nil && !json.Valid(out) {
			t.Fatalf("adapted to invalid JSON:\n%s\n---\n%s", cf, out)
		}
		secret := int(option)%len(fzCredentialOptions) < 3
		if !secret || strings.Contains(extra, fzMarker) || !fzSoleValue(opt, value) {
			return
		}
		if err != nil && strings.Contains(err.Error(), fzMarker) {
			t.Fatalf("the error shows the %s value:\n%v\n---\n%s", opt, err, cf)
		}
		for _, w := range warnings {
			if strings.Contains(w.String(), fzMarker) {
				t.Fatalf("a warning shows the %s value:\n%s\n---\n%s", opt, w.String(), cf)
			}
		}
	})
}
