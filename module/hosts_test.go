package module

import (
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

func mustHostMap(t testing.TB, overrides map[string]string, defaultTarget string) *HostMap {
	t.Helper()
	hm, err := NewHostMap(overrides, defaultTarget)
	if err != nil {
		t.Fatalf("NewHostMap(%v, %q): %v", overrides, defaultTarget, err)
	}
	return hm
}

// TestResolveKlarnaHosts: every legacy Klarna API host of the migration facts
// lands on its Kustom host, labelled with the host the app addressed.
func TestResolveKlarnaHosts(t *testing.T) {
	hm := mustHostMap(t, nil, "")
	cases := []struct{ host, to string }{
		{"api.klarna.com", KustomProduction},
		{"api-na.klarna.com", KustomProduction},
		{"api-oc.klarna.com", KustomProduction},
		{"api.playground.klarna.com", KustomPlayground},
		{"api-na.playground.klarna.com", KustomPlayground},
		{"api-oc.playground.klarna.com", KustomPlayground},
		// An app that already switched keeps working.
		{"api.kustom.co", KustomProduction},
		{"api.playground.kustom.co", KustomPlayground},
	}
	for _, c := range cases {
		t.Run(c.host, func(t *testing.T) {
			r, ok := hm.Resolve(c.host)
			if !ok {
				t.Fatalf("Resolve(%q) refused", c.host)
			}
			want := Route{FromHost: c.host, ToHost: c.to}
			if r != want {
				t.Errorf("Resolve(%q) = %+v, want %+v", c.host, r, want)
			}
			if lr, ok := hm.Lookup(c.host); !ok || lr != want {
				t.Errorf("Lookup(%q) = %+v, %v, want %+v, true", c.host, lr, ok, want)
			}
		})
	}
}

// TestResolveNormalisesHost: a Host header's case, trailing dot and port do
// not change where the request goes nor its label.
func TestResolveNormalisesHost(t *testing.T) {
	hm := mustHostMap(t, nil, "")
	cases := []struct{ host, from, to string }{
		{"API.KLARNA.COM", "api.klarna.com", KustomProduction},
		{"Api-Na.Klarna.Com", "api-na.klarna.com", KustomProduction},
		{"api.klarna.com.", "api.klarna.com", KustomProduction},
		{"api.klarna.com:443", "api.klarna.com", KustomProduction},
		{"api.klarna.com:8443", "api.klarna.com", KustomProduction},
		{"API.PLAYGROUND.KLARNA.COM.:443", "api.playground.klarna.com", KustomPlayground},
		{"api-oc.playground.klarna.com.:8443", "api-oc.playground.klarna.com", KustomPlayground},
		{"API.KUSTOM.CO:443", "api.kustom.co", KustomProduction},
		{"api.playground.kustom.co.", "api.playground.kustom.co", KustomPlayground},
	}
	for _, c := range cases {
		t.Run(c.host, func(t *testing.T) {
			r, ok := hm.Resolve(c.host)
			want := Route{FromHost: c.from, ToHost: c.to}
			if !ok || r != want {
				t.Errorf("Resolve(%q) = %+v, %v, want %+v, true", c.host, r, ok, want)
			}
		})
	}
}

// TestResolveDefaultTarget: a request for the shim itself (sidecar) or for a
// host that is nobody's API goes to the default target, labelled "local";
// an unmapped Klarna or Kustom host is refused, whatever the default.
func TestResolveDefaultTarget(t *testing.T) {
	const refused = ""
	cases := []struct {
		host                        string
		production, playground, non string // ToHost per default_target, refused = ""
	}{
		{"localhost:8080", KustomProduction, KustomPlayground, refused},
		{"localhost", KustomProduction, KustomPlayground, refused},
		{"127.0.0.1:8080", KustomProduction, KustomPlayground, refused},
		{"[::1]:8080", KustomProduction, KustomPlayground, refused},
		{"", KustomProduction, KustomPlayground, refused},
		{"kustom-shim.internal:8080", KustomProduction, KustomPlayground, refused},
		// Not under klarna.com: a name that merely contains it.
		{"evil.klarna.com.attacker.example", KustomProduction, KustomPlayground, refused},
		{"notklarna.com", KustomProduction, KustomPlayground, refused},
		// Klarna and Kustom hosts that are not API hosts are never served.
		{"pay.klarna.com", refused, refused, refused},
		{"js.playground.klarna.com", refused, refused, refused},
		{"klarna.com", refused, refused, refused},
		{"KLARNA.COM.", refused, refused, refused},
		{"www.klarna.com:443", refused, refused, refused},
		{"x.klarnaevents.klarna.net", refused, refused, refused},
		{"portal.kustom.co", refused, refused, refused},
		{"js.kustom.co", refused, refused, refused},
		{"js.playground.kustom.co", refused, refused, refused},
		{"kustom.co", refused, refused, refused},
		{"api-na.kustom.co", refused, refused, refused}, // regional host, unmapped by default
	}
	for _, target := range []string{"", TargetProduction, TargetPlayground, TargetNone} {
		hm := mustHostMap(t, nil, target)
		for _, c := range cases {
			want := c.production
			switch target {
			case TargetPlayground:
				want = c.playground
			case TargetNone:
				want = c.non
			}
			r, ok := hm.Resolve(c.host)
			if want == refused {
				if ok {
					t.Errorf("default_target %q: Resolve(%q) = %+v, want refused", target, c.host, r)
				}
				continue
			}
			if !ok || r != (Route{FromHost: LocalHost, ToHost: want}) {
				t.Errorf("default_target %q: Resolve(%q) = %+v, %v, want {local %s}", target, c.host, r, ok, want)
			}
			// Lookup never applies the default target.
			if _, ok := hm.Lookup(c.host); ok {
				t.Errorf("default_target %q: Lookup(%q) found a route", target, c.host)
			}
		}
	}
}

func TestHostMapOverrides(t *testing.T) {
	hm := mustHostMap(t, map[string]string{
		"API-NA.klarna.com.": "api-na.kustom.co", // normalised like a Host header
		"api.example.test":   "Api.Kustom.Co",
	}, TargetNone)
	cases := []struct{ host, from, to string }{
		{"api-na.klarna.com", "api-na.klarna.com", "api-na.kustom.co"},
		// The overridden host's target routes to itself, so an app that
		// switched to the regional host keeps working.
		{"api-na.kustom.co", "api-na.kustom.co", "api-na.kustom.co"},
		{"api-na.kustom.co:443", "api-na.kustom.co", "api-na.kustom.co"},
		// Defaults not overridden stay.
		{"api.klarna.com", "api.klarna.com", KustomProduction},
		{"api-oc.klarna.com", "api-oc.klarna.com", KustomProduction},
		{"api-na.playground.klarna.com", "api-na.playground.klarna.com", KustomPlayground},
		{"api.kustom.co", "api.kustom.co", KustomProduction},
		{"api.example.test", "api.example.test", KustomProduction},
	}
	for _, c := range cases {
		r, ok := hm.Resolve(c.host)
		want := Route{FromHost: c.from, ToHost: c.to}
		if !ok || r != want {
			t.Errorf("Resolve(%q) = %+v, %v, want %+v, true", c.host, r, ok, want)
		}
	}
	wantTo := []string{"api-na.kustom.co", KustomProduction, KustomPlayground}
	if got := hm.ToHosts(); !reflect.DeepEqual(got, wantTo) {
		t.Errorf("ToHosts() = %v, want %v", got, wantTo)
	}
	from := hm.FromHosts()
	for _, h := range []string{"api-na.klarna.com", "api-na.kustom.co", "api.example.test", "api.klarna.com", KustomProduction, KustomPlayground} {
		if !contains(from, h) {
			t.Errorf("FromHosts() = %v, missing %q", from, h)
		}
	}
	// The built-in map is not changed for anyone else.
	if DefaultHostMap()["api-na.klarna.com"] != KustomProduction {
		t.Errorf("an override changed DefaultHostMap()")
	}
	if r, _ := mustHostMap(t, nil, "").Resolve("api-na.klarna.com"); r.ToHost != KustomProduction {
		t.Errorf("an override leaked into another HostMap: %+v", r)
	}
}

func TestHostMapConfigErrors(t *testing.T) {
	cases := []struct {
		name      string
		overrides map[string]string
		target    string
		wantIn    []string // substrings of the error
	}{
		{"empty from", map[string]string{"": "api.kustom.co"}, "", []string{"map", "from-host", "empty"}},
		{"empty to", map[string]string{"api.klarna.com": ""}, "", []string{"map", "to-host", "empty"}},
		{"to with path", map[string]string{"api.klarna.com": "api.kustom.co/v1"}, "", []string{"map", "to-host", "api.kustom.co/v1"}},
		{"from with path", map[string]string{"api.klarna.com/x": "api.kustom.co"}, "", []string{"map", "from-host", "api.klarna.com/x"}},
		{"to with userinfo", map[string]string{"api.klarna.com": "user@api.kustom.co"}, "", []string{"map", "to-host"}},
		{"to with space", map[string]string{"api.klarna.com": "api kustom.co"}, "", []string{"map", "to-host"}},
		{"to too long", map[string]string{"api.klarna.com": strings.Repeat("a.", 130) + "co"}, "", []string{"map", "to-host", "253"}},
		{"to with scheme", map[string]string{"api.klarna.com": "https://api.kustom.co"}, "", []string{"map", "to-host", "https://api.kustom.co"}},
		{"to with scheme and path", map[string]string{"api.klarna.com": "https://api.kustom.co/"}, "", []string{"map", "to-host"}},
		{"from with scheme", map[string]string{"https://api.klarna.com": "api.kustom.co"}, "", []string{"map", "from-host"}},
		{"to with port", map[string]string{"api.klarna.com": "api.kustom.co:8443"}, "", []string{"map", "to-host", "api.kustom.co:8443"}},
		{"from with port", map[string]string{"api.klarna.com:443": "api.kustom.co"}, "", []string{"map", "from-host"}},
		{"same from-host twice", map[string]string{"api.klarna.com": "api.kustom.co", "API.KLARNA.COM.": "api.playground.kustom.co"}, "", []string{"map", "from-host"}},
		{"bad default_target", nil, "staging", []string{"default_target", "staging"}},
		{"default_target case", nil, "Production", []string{"default_target"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewHostMap(c.overrides, c.target)
			if err == nil {
				t.Fatalf("NewHostMap(%v, %q) accepted", c.overrides, c.target)
			}
			for _, s := range c.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// Two spellings of one from-host reach NewHostMap from a Caddyfile as they
// were written; the error names both, identically on every load.
func TestHostMapDuplicateFromHostError(t *testing.T) {
	overrides := map[string]string{
		"api.example.com":  "api.kustom.co",
		"API.Example.com.": "api.playground.kustom.co",
		"api.other.com":    "api.kustom.co",
	}
	const want = `map: from-hosts "API.Example.com." and "api.example.com" are the same host`
	for i := 0; i < 20; i++ {
		_, err := NewHostMap(overrides, "")
		if err == nil || err.Error() != want {
			t.Fatalf("load %d: error %v, want %s", i, err, want)
		}
	}
}

func TestHostMapToHosts(t *testing.T) {
	want := []string{KustomProduction, KustomPlayground}
	for _, target := range []string{"", TargetProduction, TargetPlayground, TargetNone} {
		if got := mustHostMap(t, nil, target).ToHosts(); !reflect.DeepEqual(got, want) {
			t.Errorf("default_target %q: ToHosts() = %v, want %v", target, got, want)
		}
	}
	from := mustHostMap(t, nil, "").FromHosts()
	wantFrom := []string{
		"api-na.klarna.com", "api-na.playground.klarna.com", "api-oc.klarna.com", "api-oc.playground.klarna.com",
		"api.klarna.com", "api.kustom.co", "api.playground.klarna.com", "api.playground.kustom.co",
	}
	if !reflect.DeepEqual(from, wantFrom) {
		t.Errorf("FromHosts() = %v, want %v", from, wantFrom)
	}
}

func TestHostIsKlarnaHost(t *testing.T) {
	cases := []struct {
		host string
		want bool
	}{
		{"api.klarna.com", true},
		{"API.KLARNA.COM:443", true},
		{"api-oc.playground.klarna.com.", true},
		{"pay.klarna.com", true},
		{"klarna.com", true},
		{"api.kustom.co", false},
		{"api.playground.kustom.co:443", false},
		{"localhost:8080", false},
		{"", false},
		{"notklarna.com", false},
		{"evil.klarna.com.attacker.example", false},
		{"klarna.com.attacker.example", false},
	}
	for _, c := range cases {
		if got := IsKlarnaHost(c.host); got != c.want {
			t.Errorf("IsKlarnaHost(%q) = %v, want %v", c.host, got, c.want)
		}
	}
}

// TestResolveLabelsBounded: whatever Host a caller sends, the from_host label
// is "local" or a host of the map, so a caller cannot mint metric series.
func TestResolveLabelsBounded(t *testing.T) {
	hm := mustHostMap(t, map[string]string{"api-na.klarna.com": "api-na.kustom.co"}, "")
	allowed := map[string]bool{LocalHost: true}
	for _, h := range hm.FromHosts() {
		allowed[h] = true
	}
	toAllowed := map[string]bool{}
	for _, h := range hm.ToHosts() {
		toAllowed[h] = true
	}
	rng := rand.New(rand.NewSource(1))
	pieces := []string{"api", "klarna", "kustom", "com", "co", ".", ".", "-", ":", "443", "[", "]", "::1",
		"playground", "na", "oc", "A", "PI", "x", "%", "\x00", "é", " ", "localhost", "api.klarna.com", "api.kustom.co"}
	for i := 0; i < 10000; i++ {
		var b strings.Builder
		for n := rng.Intn(8); n >= 0; n-- {
			if rng.Intn(4) == 0 {
				b.WriteByte(byte(rng.Intn(256)))
			} else {
				b.WriteString(pieces[rng.Intn(len(pieces))])
			}
		}
		host := b.String()
		r, ok := hm.Resolve(host)
		if !ok {
			continue
		}
		if !allowed[r.FromHost] {
			t.Fatalf("Resolve(%q).FromHost = %q, not %q nor a host of the map", host, r.FromHost, LocalHost)
		}
		if !toAllowed[r.ToHost] {
			t.Fatalf("Resolve(%q).ToHost = %q, not in ToHosts() %v", host, r.ToHost, hm.ToHosts())
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
