package caddyfile_test

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

// envPlaceholder is a runtime {env.NAME} placeholder in a config.
var envPlaceholder = regexp.MustCompile(`\{env\.([A-Za-z_][A-Za-z0-9_]*)\}`)

// TestGoldenProvisions loads the JSON half of every testdata/*.caddyfiletest
// into a Caddy config and provisions it, as a load does, without starting a
// listener. TestAdapt proves the Caddyfile becomes that JSON; this proves the
// JSON is a config the modules accept, so that no golden file documents a
// config that would fail at load. The parser checks syntax only and leaves
// meaning (allowed values, host names, secrets, transports) to the modules,
// so adapting alone proves little.
//
// Each {env.NAME} placeholder in the JSON is set to a harmless value; files a
// golden file reads ({file.…} secrets, a trust pool) are test files under
// testdata/, named relative to this directory, so they must exist. The
// storage, logs, Caddy's data directory (instance ID) and the admin endpoint
// are kept in a temporary directory or off, whatever the golden file says,
// so that a golden file such as the copy of Caddyfile.example touches neither
// the network nor the home directory. Not parallel: Caddy's config state is
// process-wide.
func TestGoldenProvisions(t *testing.T) {
	eachGolden(t, func(t *testing.T, path, _, _, expected string) {
		dir := shimtest.New(t).Dir // also points XDG_DATA_HOME and XDG_CONFIG_HOME there
		for _, m := range envPlaceholder.FindAllStringSubmatch(expected, -1) {
			// Valid for every field: no ':' (usernames), no line break.
			t.Setenv(m[1], "golden-"+strings.ToLower(m[1]))
		}
		var cfg caddy.Config
		if err := json.Unmarshal([]byte(expected), &cfg); err != nil {
			t.Fatalf("%s: decoding the JSON half: %v", path, err)
		}
		hermetic(t, &cfg, dir)
		if err := caddy.Validate(&cfg); err != nil {
			t.Errorf("%s adapts but does not provision: %v", path, err)
		}
	})
}

// hermetic points cfg's storage and default log into dir and turns the admin
// endpoint and config persistence off.
func hermetic(t *testing.T, cfg *caddy.Config, dir string) {
	t.Helper()
	persist := false
	cfg.Admin = &caddy.AdminConfig{Disabled: true, Config: &caddy.ConfigSettings{Persist: &persist}}
	storage, err := json.Marshal(map[string]string{"module": "file_system", "root": filepath.Join(dir, "storage")})
	if err != nil {
		t.Fatal(err)
	}
	cfg.StorageRaw = storage
	if cfg.Logging == nil {
		cfg.Logging = new(caddy.Logging)
	}
	if cfg.Logging.Logs == nil {
		cfg.Logging.Logs = map[string]*caddy.CustomLog{}
	}
	writer, err := json.Marshal(map[string]string{"output": "file", "filename": filepath.Join(dir, "caddy.log")})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logging.Logs["default"] == nil {
		cfg.Logging.Logs["default"] = new(caddy.CustomLog)
	}
	cfg.Logging.Logs["default"].WriterRaw = writer
}
