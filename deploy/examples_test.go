package deploy

// Tests of the deployment examples: the Kubernetes sidecar (kubernetes/),
// the systemd unit (systemd/) and the Dockerfile. The Caddyfiles are adapted
// and provisioned with caddy.Validate (placeholders, secret files and all),
// the manifests are decoded strictly and checked against the Caddyfile they
// run, and both setups are started for real from the kustom-shim binary in
// front of a local TLS stand-in for Kustom, reloaded after a key rotation,
// stopped and started again.
//
// The systemd-analyze tests need the Debian package "systemd". They are
// skipped without it, unless the CI environment variable is set.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	yaml "go.yaml.in/yaml/v3"

	_ "github.com/kustomshim/kustomshim/caddyfile"
	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

const (
	k8sCaddyfile     = "kubernetes/Caddyfile"
	k8sManifest      = "kubernetes/sidecar.yaml"
	k8sSecret        = "kubernetes/secret.example.yaml"
	systemdUnitFile  = "systemd/kustom-shim.service"
	systemdCaddyfile = "systemd/Caddyfile"
	dockerfilePath   = "Dockerfile"
	goModFile        = "../go.mod"

	// Where the binary and its config live on a host, as the unit says.
	installedBinary    = "/usr/local/bin/kustom-shim"
	installedCaddyfile = "/etc/kustom-shim/Caddyfile"

	// What deploy/README.md tells a Kubernetes user to run in the shim's
	// container after changing the Secret or the ConfigMap.
	k8sReloadCommand = "kustom-shim reload --config /etc/kustom-shim/Caddyfile --force"
)

// ---------------------------------------------------------------------------
// The kustom-shim binary, built once, as a user builds it.

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func shimBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "kustom-shim-deploy-test")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "kustom-shim")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/kustomshim/kustomshim/cmd/kustom-shim").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("building kustom-shim: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// ---------------------------------------------------------------------------
// Caddyfiles: adapting, and reading the adapted JSON.

type adaptedRoute struct {
	Match []struct {
		Path []string `json:"path"`
	} `json:"match"`
	Handle []map[string]any `json:"handle"`
}

type adaptedServer struct {
	Listen []string       `json:"listen"`
	Routes []adaptedRoute `json:"routes"`
}

type adaptedCredential struct {
	Name           string `json:"name"`
	KlarnaUsername string `json:"klarna_username"`
	KlarnaPassword string `json:"klarna_password"`
	KustomUsername string `json:"kustom_username"`
	KustomPassword string `json:"kustom_password"`
	KustomAPIKey   string `json:"kustom_api_key"`
}

type adaptedConfig struct {
	Admin struct {
		Listen string `json:"listen"`
		Config *struct {
			Persist *bool `json:"persist"`
		} `json:"config"`
	} `json:"admin"`
	Storage *struct {
		Module string `json:"module"`
		Root   string `json:"root"`
	} `json:"storage"`
	Apps struct {
		HTTP struct {
			Servers map[string]adaptedServer `json:"servers"`
		} `json:"http"`
		Kustom *struct {
			InstanceID string `json:"instance_id"`
		} `json:"kustom"`
	} `json:"apps"`
}

// adapt runs the caddyfile adapter, failing on errors and on warnings (an
// unformatted Caddyfile, a directive that is ignored, …).
func adapt(t *testing.T, name string, body []byte) ([]byte, adaptedConfig) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("the caddyfile adapter is not registered")
	}
	out, warnings, err := adapter.Adapt(body, map[string]any{"filename": name})
	if err != nil {
		t.Fatalf("%s does not adapt: %v", name, err)
	}
	for _, w := range warnings {
		t.Errorf("%s: adapter warning: %s", name, w.String())
	}
	var cfg adaptedConfig
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("%s: adapted JSON: %v", name, err)
	}
	return out, cfg
}

func splitListen(t *testing.T, addr string) (host string, port int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("listen address %q: port: %v", addr, err)
	}
	return h, n
}

// loopbackOnly reports whether every listen address of s is on loopback.
func loopbackOnly(t *testing.T, s adaptedServer) bool {
	for _, l := range s.Listen {
		h, _ := splitListen(t, l)
		ip := net.ParseIP(h)
		if ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return len(s.Listen) > 0
}

// serverPort is the one port a server listens on.
func serverPort(t *testing.T, name string, s adaptedServer) int {
	t.Helper()
	port := 0
	for _, l := range s.Listen {
		_, p := splitListen(t, l)
		if port != 0 && p != port {
			t.Fatalf("server %s listens on several ports: %v", name, s.Listen)
		}
		port = p
	}
	return port
}

// The two sites of each example: the shim on loopback, and the site with
// the health check, the status page and the metrics.
type sites struct {
	shim, status         adaptedServer
	shimPort, statusPort int
}

func findSites(t *testing.T, name string, cfg adaptedConfig) sites {
	t.Helper()
	var s sites
	found := map[string]bool{}
	for srvName, srv := range cfg.Apps.HTTP.Servers {
		hasKustom := len(kustomHandlers(srv)) > 0
		switch {
		case hasKustom && loopbackOnly(t, srv):
			if found["shim"] {
				t.Fatalf("%s: more than one loopback site with kustom", name)
			}
			found["shim"] = true
			s.shim, s.shimPort = srv, serverPort(t, srvName, srv)
		case hasKustom:
			t.Errorf("%s: server %s runs kustom on %v: a sidecar must listen on loopback only", name, srvName, srv.Listen)
		case !loopbackOnly(t, srv):
			if found["status"] {
				t.Fatalf("%s: more than one non-loopback site", name)
			}
			found["status"] = true
			s.status, s.statusPort = srv, serverPort(t, srvName, srv)
		}
	}
	if !found["shim"] || !found["status"] {
		t.Fatalf("%s: want one loopback site with kustom and one status site, found %v", name, found)
	}
	return s
}

func kustomHandlers(s adaptedServer) []map[string]any {
	var hs []map[string]any
	for _, r := range s.Routes {
		for _, h := range r.Handle {
			if h["handler"] == "kustom" {
				hs = append(hs, h)
			}
		}
	}
	return hs
}

func credentials(t *testing.T, s adaptedServer) []adaptedCredential {
	t.Helper()
	var creds []adaptedCredential
	for _, h := range kustomHandlers(s) {
		b, err := json.Marshal(h["credentials"])
		if err != nil {
			t.Fatal(err)
		}
		var cs []adaptedCredential
		if err := json.Unmarshal(b, &cs); err != nil {
			t.Fatal(err)
		}
		creds = append(creds, cs...)
	}
	return creds
}

// handlerFor is the handler that answers path on server s, as Caddy's
// routes pick it (first route whose path matcher matches, or none).
func handlerFor(s adaptedServer, p string) map[string]any {
	terminal := []string{"static_response", "kustom_status", "metrics", "kustom", "reverse_proxy", "file_server"}
	for _, r := range s.Routes {
		matches := len(r.Match) == 0
		for _, m := range r.Match {
			for _, pattern := range m.Path {
				if ok, _ := path.Match(pattern, p); ok {
					matches = true
				}
			}
		}
		if !matches {
			continue
		}
		for _, h := range r.Handle {
			if name, _ := h["handler"].(string); slices.Contains(terminal, name) {
				return h
			}
		}
	}
	return nil
}

func handlerName(h map[string]any) string {
	name, _ := h["handler"].(string)
	return name
}

var filePlaceholder = regexp.MustCompile(`^\{file\.([^{}]+)\}$`)

// secretFiles lists the files a credential's secrets are read from.
func secretFiles(t *testing.T, c adaptedCredential) []string {
	t.Helper()
	var files []string
	for field, v := range map[string]string{
		"klarna_password": c.KlarnaPassword, "kustom_password": c.KustomPassword, "kustom_api_key": c.KustomAPIKey,
	} {
		if v == "" {
			continue
		}
		m := filePlaceholder.FindStringSubmatch(v)
		if m == nil {
			t.Errorf("credential %s: %s is %q, want a {file.…} placeholder", c.Name, field, v)
			continue
		}
		files = append(files, m[1])
	}
	slices.Sort(files)
	return files
}

// checkSites checks what both examples must have: the shim with file-based
// secrets on loopback, and health, status page and metrics on the other site.
func checkSites(t *testing.T, name string, cfg adaptedConfig) sites {
	t.Helper()
	s := findSites(t, name, cfg)
	creds := credentials(t, s.shim)
	if len(creds) == 0 {
		t.Errorf("%s: the kustom handler has no credential", name)
	}
	for _, c := range creds {
		if c.KlarnaUsername == "" || (c.KlarnaPassword == "" && c.KustomAPIKey == "") {
			t.Errorf("%s: credential %+v is incomplete", name, c)
		}
		if len(secretFiles(t, c)) == 0 {
			t.Errorf("%s: credential %s reads no secret from a file", name, c.Name)
		}
	}
	for p, want := range map[string]string{
		"/healthz": "static_response", "/kustom-shim/status": "kustom_status", "/metrics": "metrics",
	} {
		h := handlerFor(s.status, p)
		if got := handlerName(h); got != want {
			t.Errorf("%s: %s on port %d is answered by %q, want %s", name, p, s.statusPort, got, want)
		}
		if p == "/healthz" && h != nil {
			if code := fmt.Sprint(h["status_code"]); code != "200" {
				t.Errorf("%s: /healthz answers %s, want 200", name, code)
			}
		}
	}
	if !strings.HasPrefix(cfg.Admin.Listen, "unix/") {
		t.Errorf("%s: admin listens on %q, want a unix socket (the admin API can load any config)", name, cfg.Admin.Listen)
	}
	if cfg.Admin.Config == nil || cfg.Admin.Config.Persist == nil || *cfg.Admin.Config.Persist {
		t.Errorf("%s: want persist_config off (the root file system is read-only)", name)
	}
	return s
}

func adminSocketDir(t *testing.T, cfg adaptedConfig) string {
	t.Helper()
	sock, ok := strings.CutPrefix(cfg.Admin.Listen, "unix/")
	if !ok {
		t.Fatalf("admin %q is not a unix socket", cfg.Admin.Listen)
	}
	sock, _, _ = strings.Cut(sock, "|") // file mode bits
	return path.Dir(sock)
}

// ---------------------------------------------------------------------------
// Kubernetes manifests, decoded strictly: a misspelt field fails.

type intOrString string

func (v *intOrString) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a port number or name", n.Line)
	}
	*v = intOrString(n.Value)
	return nil
}

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type typeMeta struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
}

type configMap struct {
	typeMeta `yaml:",inline"`
	Data     map[string]string `yaml:"data"`
}

type secretObject struct {
	typeMeta   `yaml:",inline"`
	Type       string            `yaml:"type"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

type serviceObject struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string      `yaml:"name"`
			Port       int         `yaml:"port"`
			TargetPort intOrString `yaml:"targetPort"`
			Protocol   string      `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type probe struct {
	HTTPGet *struct {
		Path   string      `yaml:"path"`
		Port   intOrString `yaml:"port"`
		Scheme string      `yaml:"scheme"`
	} `yaml:"httpGet"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	PeriodSeconds       int `yaml:"periodSeconds"`
	TimeoutSeconds      int `yaml:"timeoutSeconds"`
	SuccessThreshold    int `yaml:"successThreshold"`
	FailureThreshold    int `yaml:"failureThreshold"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	RestartPolicy   string   `yaml:"restartPolicy"`
	Command         []string `yaml:"command"`
	Args            []string `yaml:"args"`
	Env             []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	StartupProbe   *probe `yaml:"startupProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Resources      *struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext *struct {
		RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
		RunAsUser                *int64 `yaml:"runAsUser"`
		RunAsGroup               *int64 `yaml:"runAsGroup"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
		Capabilities             *struct {
			Add  []string `yaml:"add"`
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
		SeccompProfile *struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
}

func (c container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// containerPort resolves a probe's or a Service's port (number or name).
func (c container) containerPort(p intOrString) (int, bool) {
	if n, err := strconv.Atoi(string(p)); err == nil {
		return n, true
	}
	for _, cp := range c.Ports {
		if cp.Name == string(p) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name        string `yaml:"name"`
		DefaultMode *int   `yaml:"defaultMode"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName  string `yaml:"secretName"`
		DefaultMode *int   `yaml:"defaultMode"`
	} `yaml:"secret"`
	EmptyDir *struct {
		Medium    string `yaml:"medium"`
		SizeLimit string `yaml:"sizeLimit"`
	} `yaml:"emptyDir"`
}

type deployment struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		Replicas *int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     struct {
				AutomountServiceAccountToken *bool `yaml:"automountServiceAccountToken"`
				SecurityContext              *struct {
					FSGroup             *int64 `yaml:"fsGroup"`
					FSGroupChangePolicy string `yaml:"fsGroupChangePolicy"`
				} `yaml:"securityContext"`
				TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
				InitContainers                []container `yaml:"initContainers"`
				Containers                    []container `yaml:"containers"`
				Volumes                       []volume    `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func (d deployment) volume(name string) (volume, bool) {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return volume{}, false
}

// mountFor returns the volume mounted at dir in c, and whether it is read-only.
func (d deployment) mountFor(c container, dir string) (volume, bool, bool) {
	for _, m := range c.VolumeMounts {
		if m.MountPath == dir {
			v, ok := d.volume(m.Name)
			return v, m.ReadOnly, ok
		}
	}
	return volume{}, false, false
}

// mountUnder returns the volume whose mount holds p in c (the deepest one),
// and whether that mount is read-only.
func (d deployment) mountUnder(c container, p string) (volume, bool, bool) {
	best := ""
	var ro, found bool
	var v volume
	for _, m := range c.VolumeMounts {
		inside := p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !inside || len(m.MountPath) <= len(best) {
			continue
		}
		if vv, ok := d.volume(m.Name); ok {
			best, ro, v, found = m.MountPath, m.ReadOnly, vv, true
		}
	}
	return v, ro, found
}

type manifestDoc struct {
	file       string
	line       int
	kind, name string
	node       *yaml.Node
}

// readManifests splits a multi-document YAML file and checks that every
// document is a Kubernetes object: apiVersion, kind and metadata.name.
func readManifests(t *testing.T, file string) []manifestDoc {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []manifestDoc
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(n.Content) == 0 || n.Content[0].Tag == "!!null" {
			continue // an empty document
		}
		var tm typeMeta
		if err := n.Decode(&tm); err != nil {
			t.Fatalf("%s:%d: %v", file, n.Line, err)
		}
		if tm.APIVersion == "" || tm.Kind == "" || tm.Metadata.Name == "" {
			t.Errorf("%s:%d: document without apiVersion, kind or metadata.name: %+v", file, n.Line, tm)
		}
		docs = append(docs, manifestDoc{file: file, line: n.Content[0].Line, kind: tm.Kind, name: tm.Metadata.Name, node: &n})
	}
	if len(docs) == 0 {
		t.Fatalf("%s has no documents", file)
	}
	return docs
}

// decodeStrict decodes a document into out, failing on any field that out
// does not know (a typo such as readinesProbe).
func decodeStrict(t *testing.T, d manifestDoc, out any) {
	t.Helper()
	b, err := yaml.Marshal(d.node)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		t.Fatalf("%s:%d (%s %s): %v", d.file, d.line, d.kind, d.name, err)
	}
}

type k8sExample struct {
	caddyfile  []byte
	cfg        adaptedConfig
	sites      sites
	configMap  configMap
	secret     secretObject
	service    serviceObject
	deploy     deployment
	shim, app  container
	shimIsInit bool
}

func loadK8s(t *testing.T) k8sExample {
	t.Helper()
	var ex k8sExample
	ex.caddyfile = []byte(readFile(t, k8sCaddyfile))
	_, ex.cfg = adapt(t, k8sCaddyfile, ex.caddyfile)
	ex.sites = checkSites(t, k8sCaddyfile, ex.cfg)

	kinds := map[string]int{}
	for _, d := range readManifests(t, k8sManifest) {
		kinds[d.kind]++
		switch d.kind {
		case "ConfigMap":
			decodeStrict(t, d, &ex.configMap)
		case "Deployment":
			decodeStrict(t, d, &ex.deploy)
		case "Service":
			decodeStrict(t, d, &ex.service)
		default:
			t.Errorf("%s: unexpected %s %s", k8sManifest, d.kind, d.name)
		}
	}
	for _, k := range []string{"ConfigMap", "Deployment", "Service"} {
		if kinds[k] != 1 {
			t.Fatalf("%s: want one %s, found %d", k8sManifest, k, kinds[k])
		}
	}
	secrets := readManifests(t, k8sSecret)
	if len(secrets) != 1 || secrets[0].kind != "Secret" {
		t.Fatalf("%s: want exactly one Secret", k8sSecret)
	}
	decodeStrict(t, secrets[0], &ex.secret)

	pod := ex.deploy.Spec.Template.Spec
	for _, c := range pod.InitContainers {
		if strings.Contains(c.Image, "kustom-shim") {
			ex.shim, ex.shimIsInit = c, true
		}
	}
	for _, c := range pod.Containers {
		switch {
		case strings.Contains(c.Image, "kustom-shim"):
			if ex.shim.Name != "" {
				t.Fatal("two kustom-shim containers")
			}
			ex.shim = c
		case ex.app.Name == "":
			ex.app = c
		default:
			t.Errorf("unexpected container %s", c.Name)
		}
	}
	if ex.shim.Name == "" || ex.app.Name == "" {
		t.Fatalf("%s: want the app container and the kustom-shim container, got %q and %q", k8sManifest, ex.app.Name, ex.shim.Name)
	}
	return ex
}

// configPath is the Caddyfile the shim container runs: its args, or the
// image's default command (deploy/Dockerfile).
func configPath(t *testing.T, c container) string {
	t.Helper()
	args := c.Args
	if len(c.Command) > 0 {
		args = c.Command[1:]
		args = append(args, c.Args...)
	}
	if len(args) == 0 {
		args = dockerfileInstr(t)["CMD"]
	}
	if len(args) < 3 || args[0] != "run" {
		t.Fatalf("kustom-shim container runs %v, want run --config <file>", args)
	}
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("kustom-shim container runs %v without --config", args)
	}
	return args[i+1]
}

func TestKubernetesConfigMapIsTheCaddyfile(t *testing.T) {
	ex := loadK8s(t)
	cfgFile := configPath(t, ex.shim)
	v, ro, ok := ex.deploy.mountFor(ex.shim, path.Dir(cfgFile))
	if !ok || v.ConfigMap == nil {
		t.Fatalf("nothing mounts a ConfigMap at %s, where the shim reads its Caddyfile", path.Dir(cfgFile))
	}
	if !ro {
		t.Errorf("the config volume at %s should be read-only", path.Dir(cfgFile))
	}
	if v.ConfigMap.Name != ex.configMap.Metadata.Name {
		t.Errorf("the config volume uses ConfigMap %q, the manifest defines %q", v.ConfigMap.Name, ex.configMap.Metadata.Name)
	}
	embedded, ok := ex.configMap.Data[path.Base(cfgFile)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q (the file the shim reads)", ex.configMap.Metadata.Name, path.Base(cfgFile))
	}
	if embedded != string(ex.caddyfile) {
		t.Errorf("the Caddyfile in %s differs from %s; copy it again:\n%s",
			k8sManifest, k8sCaddyfile, firstDifference(embedded, string(ex.caddyfile)))
	}
	if !strings.Contains(readFile(t, readmeFile), "kubectl create configmap "+ex.configMap.Metadata.Name+" --from-file="+path.Base(cfgFile)+"=deploy/"+k8sCaddyfile) {
		t.Errorf("%s should show how to create the ConfigMap from %s", readmeFile, k8sCaddyfile)
	}
}

func firstDifference(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d: ConfigMap %q, file %q", i+1, x, y)
		}
	}
	return "(same lines)"
}

func TestKubernetesSidecar(t *testing.T) {
	ex := loadK8s(t)
	pod := ex.deploy.Spec.Template.Spec
	tmpl := ex.deploy.Spec.Template.Metadata

	// Deployment, pod labels and Service select the same pods.
	for k, v := range ex.deploy.Spec.Selector.MatchLabels {
		if tmpl.Labels[k] != v {
			t.Errorf("Deployment selector %s=%s does not match the pod template's labels %v", k, v, tmpl.Labels)
		}
	}
	if len(ex.service.Spec.Selector) == 0 {
		t.Error("the Service has no selector")
	}
	for k, v := range ex.service.Spec.Selector {
		if tmpl.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not match the pod template's labels %v", k, v, tmpl.Labels)
		}
	}

	// The app reaches the shim on the pod's loopback, at the port the
	// Caddyfile binds there.
	if ex.app.Image != "registry.example/legacy-shop:1.0" {
		t.Errorf("app image %q", ex.app.Image)
	}
	base, ok := ex.app.env("KLARNA_BASE_URL")
	if !ok {
		t.Fatal("the app container has no KLARNA_BASE_URL")
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("KLARNA_BASE_URL %q: %v", base, err)
	}
	if u.Scheme != "http" || !slices.Contains([]string{"localhost", "127.0.0.1", "::1"}, u.Hostname()) {
		t.Errorf("KLARNA_BASE_URL %q: want http:// on the pod's loopback", base)
	}
	if u.Port() != strconv.Itoa(ex.sites.shimPort) {
		t.Errorf("KLARNA_BASE_URL %q: port %s, but the Caddyfile's shim site listens on %d", base, u.Port(), ex.sites.shimPort)
	}

	// The shim's image, and a native sidecar that starts before the app.
	if ex.shim.Image != "registry.example/kustom-shim:latest" {
		t.Errorf("shim image %q", ex.shim.Image)
	}
	if ex.shimIsInit {
		if ex.shim.RestartPolicy != "Always" {
			t.Errorf("the shim is an init container without restartPolicy: Always: the app would never start")
		}
		if ex.shim.StartupProbe == nil {
			t.Error("a native sidecar needs a startupProbe, or the app may start before the shim listens")
		}
	} else if ex.shim.RestartPolicy != "" {
		t.Errorf("restartPolicy %q on a regular container", ex.shim.RestartPolicy)
	}

	// Declared ports: exactly the non-loopback site; nothing else of the
	// shim is reachable from outside the pod.
	var declared []int
	for _, p := range ex.shim.Ports {
		declared = append(declared, p.ContainerPort)
	}
	if !slices.Equal(declared, []int{ex.sites.statusPort}) {
		t.Errorf("the shim container declares ports %v; the Caddyfile serves %d to the cluster (and %d on loopback only)",
			declared, ex.sites.statusPort, ex.sites.shimPort)
	}

	// Probes: on the status site, at a path it answers with 200.
	probes := map[string]*probe{"readinessProbe": ex.shim.ReadinessProbe, "livenessProbe": ex.shim.LivenessProbe, "startupProbe": ex.shim.StartupProbe}
	for name, p := range probes {
		if p == nil {
			if name != "startupProbe" {
				t.Errorf("the shim container has no %s", name)
			}
			continue
		}
		if p.HTTPGet == nil {
			t.Errorf("%s is not an httpGet probe", name)
			continue
		}
		port, ok := ex.shim.containerPort(p.HTTPGet.Port)
		if !ok {
			t.Errorf("%s: port %q is not a port of the container", name, p.HTTPGet.Port)
			continue
		}
		if port != ex.sites.statusPort {
			t.Errorf("%s: port %d, but the Caddyfile serves the health check on %d", name, port, ex.sites.statusPort)
		}
		h := handlerFor(ex.sites.status, p.HTTPGet.Path)
		if handlerName(h) != "static_response" || fmt.Sprint(h["status_code"]) != "200" {
			t.Errorf("%s: the Caddyfile does not answer %s on port %d with 200 (handler %v)", name, p.HTTPGet.Path, port, h)
		}
		if p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != "HTTP" {
			t.Errorf("%s: scheme %s, the status site is plain HTTP", name, p.HTTPGet.Scheme)
		}
	}

	// Prometheus scrape annotations point at the metrics handler.
	ann := tmpl.Annotations
	if ann["prometheus.io/scrape"] != "true" {
		t.Errorf("prometheus.io/scrape = %q, want \"true\"", ann["prometheus.io/scrape"])
	}
	if ann["prometheus.io/port"] != strconv.Itoa(ex.sites.statusPort) {
		t.Errorf("prometheus.io/port = %q, but metrics are served on %d", ann["prometheus.io/port"], ex.sites.statusPort)
	}
	if h := handlerFor(ex.sites.status, ann["prometheus.io/path"]); handlerName(h) != "metrics" {
		t.Errorf("prometheus.io/path = %q is not served by the metrics handler (got %v)", ann["prometheus.io/path"], h)
	}

	// The Service exposes the status site.
	if len(ex.service.Spec.Ports) == 0 {
		t.Error("the Service has no ports")
	}
	for _, p := range ex.service.Spec.Ports {
		port, ok := ex.shim.containerPort(p.TargetPort)
		if !ok || port != ex.sites.statusPort {
			t.Errorf("Service port %s targets %q (%d), want the status site's %d", p.Name, p.TargetPort, port, ex.sites.statusPort)
		}
		if p.Port != ex.sites.statusPort {
			t.Errorf("Service port %d, want %d as documented", p.Port, ex.sites.statusPort)
		}
	}

	// Secrets: every {file.…} is in a read-only Secret volume of the Secret
	// the template defines, and every key of the Secret is used.
	used := map[string]bool{}
	for _, c := range credentials(t, ex.sites.shim) {
		for _, f := range secretFiles(t, c) {
			v, ro, ok := ex.deploy.mountFor(ex.shim, path.Dir(f))
			if !ok || v.Secret == nil {
				t.Errorf("credential %s reads %s, but no Secret is mounted at %s", c.Name, f, path.Dir(f))
				continue
			}
			if !strings.HasPrefix(f, "/run/secrets/kustom-shim/") {
				t.Errorf("credential %s reads %s, want a file under /run/secrets/kustom-shim/", c.Name, f)
			}
			if !ro {
				t.Errorf("the Secret volume at %s should be read-only", path.Dir(f))
			}
			if v.Secret.SecretName != ex.secret.Metadata.Name {
				t.Errorf("the volume at %s uses Secret %q, %s defines %q", path.Dir(f), v.Secret.SecretName, k8sSecret, ex.secret.Metadata.Name)
			}
			if _, ok := ex.secret.StringData[path.Base(f)]; !ok {
				t.Errorf("credential %s reads %s, but the Secret has no key %q", c.Name, f, path.Base(f))
			}
			used[path.Base(f)] = true
			if m := v.Secret.DefaultMode; m == nil || *m&0o007 != 0 {
				t.Errorf("the Secret volume's defaultMode should give others no access")
			} else if *m&0o040 != 0 {
				// Group-readable: the pod's fsGroup must be the shim's group.
				sc := pod.SecurityContext
				if sc == nil || sc.FSGroup == nil || ex.shim.SecurityContext == nil || ex.shim.SecurityContext.RunAsGroup == nil ||
					*sc.FSGroup != *ex.shim.SecurityContext.RunAsGroup {
					t.Error("the Secret files are group-readable, but the pod's fsGroup is not the shim's group: it could not read them")
				}
			}
		}
	}
	for k, v := range ex.secret.StringData {
		if !used[k] {
			t.Errorf("Secret key %s is not read by the Caddyfile", k)
		}
		if v != "REPLACE_ME" {
			t.Errorf("Secret key %s = %q in the template: use the obviously fake REPLACE_ME", k, v)
		}
	}
	if ex.secret.Type != "Opaque" || len(ex.secret.Data) != 0 {
		t.Errorf("the Secret template should be type Opaque with stringData only")
	}
	for _, c := range append(pod.Containers, pod.InitContainers...) {
		if c.Name == ex.shim.Name {
			continue
		}
		for _, m := range c.VolumeMounts {
			if v, _ := ex.deploy.volume(m.Name); v.Secret != nil && v.Secret.SecretName == ex.secret.Metadata.Name {
				t.Errorf("container %s mounts the shim's Secret: only the shim should see the Kustom key", c.Name)
			}
		}
	}

	// Writable places: Caddy's data directory, the storage root and the
	// admin socket, on emptyDir volumes (the root file system is read-only).
	dataHome, ok := ex.shim.env("XDG_DATA_HOME")
	if !ok {
		t.Error("the shim container does not set XDG_DATA_HOME (Caddy's instance ID and default storage)")
	}
	writable := map[string]string{"XDG_DATA_HOME": dataHome, "admin socket": adminSocketDir(t, ex.cfg)}
	if ex.cfg.Storage != nil {
		if ex.cfg.Storage.Module != "file_system" {
			t.Logf("storage module %s", ex.cfg.Storage.Module)
		} else {
			writable["storage"] = ex.cfg.Storage.Root
		}
	}
	for what, p := range writable {
		v, ro, ok := ex.deploy.mountUnder(ex.shim, p)
		if !ok || v.EmptyDir == nil || ro {
			t.Errorf("%s (%s) is not on a writable emptyDir volume in the shim container", what, p)
			continue
		}
		if what == "admin socket" {
			for _, c := range pod.Containers {
				for _, m := range c.VolumeMounts {
					if m.Name == v.Name && c.Name != ex.shim.Name {
						t.Errorf("container %s mounts the admin socket's volume %s: it could reconfigure the shim", c.Name, v.Name)
					}
				}
			}
		}
	}

	// Hardening and resources.
	sc := ex.shim.SecurityContext
	switch {
	case sc == nil:
		t.Error("the shim container has no securityContext")
	default:
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Error("runAsNonRoot should be true")
		}
		if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Error("runAsUser should be a non-root uid (65532, distroless nonroot)")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("readOnlyRootFilesystem should be true")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation should be false")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || len(sc.Capabilities.Add) != 0 {
			t.Error("capabilities should drop ALL and add none (ports above 1024)")
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != "RuntimeDefault" {
			t.Error("seccompProfile should be RuntimeDefault")
		}
	}
	if r := ex.shim.Resources; r == nil || r.Requests["cpu"] == "" || r.Requests["memory"] == "" || r.Limits["memory"] == "" {
		t.Error("the shim container should request cpu and memory and limit memory")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken should be false: neither container talks to the API server")
	}
}

// ---------------------------------------------------------------------------
// Dockerfile: consistent with go.mod and with the Deployment.

func dockerfileInstr(t *testing.T) map[string][]string {
	t.Helper()
	instr := map[string][]string{}
	for _, line := range strings.Split(readFile(t, dockerfilePath), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		op, rest, _ := strings.Cut(line, " ")
		op = strings.ToUpper(op)
		var args []string
		if strings.HasPrefix(rest, "[") {
			if err := json.Unmarshal([]byte(rest), &args); err != nil {
				t.Fatalf("%s: %s %s: %v", dockerfilePath, op, rest, err)
			}
		} else {
			args = strings.Fields(rest)
		}
		if op == "FROM" || op == "ENV" || op == "COPY" || op == "RUN" {
			instr[op] = append(instr[op], strings.Join(args, " "))
			continue
		}
		instr[op] = args
	}
	return instr
}

func TestDockerfile(t *testing.T) {
	instr := dockerfileInstr(t)
	goDirective := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(readFile(t, goModFile))
	if goDirective == nil {
		t.Fatal("go.mod has no go directive")
	}
	if len(instr["FROM"]) != 2 {
		t.Fatalf("want a two-stage build, FROM lines: %v", instr["FROM"])
	}
	if want := "golang:" + goDirective[1]; !strings.HasPrefix(instr["FROM"][0], want) {
		t.Errorf("build stage %q: want %s (go.mod says go %s)", instr["FROM"][0], want, goDirective[1])
	}
	if !strings.HasPrefix(instr["FROM"][1], "gcr.io/distroless/static") {
		t.Errorf("final stage %q: want distroless/static", instr["FROM"][1])
	}
	if !slices.ContainsFunc(instr["RUN"], func(s string) bool {
		return strings.Contains(s, "CGO_ENABLED=0") && strings.HasSuffix(s, "./cmd/kustom-shim")
	}) {
		t.Errorf("no static build of ./cmd/kustom-shim in %v", instr["RUN"])
	}
	if !slices.Equal(instr["ENTRYPOINT"], []string{installedBinary}) {
		t.Errorf("ENTRYPOINT %v, want [%s]", instr["ENTRYPOINT"], installedBinary)
	}
	ex := loadK8s(t)
	if got := configPath(t, ex.shim); !slices.Equal(instr["CMD"], []string{"run", "--config", got}) {
		t.Errorf("CMD %v: the Deployment runs the shim with --config %s", instr["CMD"], got)
	}
	user := instr["USER"]
	if len(user) != 1 || ex.shim.SecurityContext == nil || ex.shim.SecurityContext.RunAsUser == nil ||
		strings.Split(user[0], ":")[0] != strconv.FormatInt(*ex.shim.SecurityContext.RunAsUser, 10) {
		t.Errorf("USER %v differs from the Deployment's runAsUser", user)
	}
	dataHome, _ := ex.shim.env("XDG_DATA_HOME")
	if !slices.ContainsFunc(instr["ENV"], func(s string) bool { return strings.Contains(s, "XDG_DATA_HOME="+dataHome) }) {
		t.Errorf("ENV %v: XDG_DATA_HOME should be %s, as in the Deployment", instr["ENV"], dataHome)
	}
}

// ---------------------------------------------------------------------------
// systemd unit.

type unitFile map[string]map[string][]string // section → key → values

func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not Key=Value in a section", systemdUnitFile, i+1, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) != 1 {
		t.Errorf("[%s] %s= is set %d times, want once", section, key, len(vs))
		return ""
	}
	return vs[0]
}

var credentialsDirPlaceholder = regexp.MustCompile(`\{file\.\{\$CREDENTIALS_DIRECTORY(?::([^}]*))?\}/([A-Za-z0-9_.-]+)\}`)

func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, readFile(t, systemdUnitFile))
	caddyfile := readFile(t, systemdCaddyfile)
	_, cfg := adapt(t, systemdCaddyfile, []byte(caddyfile))
	s := checkSites(t, systemdCaddyfile, cfg)
	unitName := filepath.Base(systemdUnitFile)

	want := map[string]string{
		"Type": "notify", "User": "kustom-shim", "DynamicUser": "yes", "Restart": "on-failure",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"CapabilityBoundingSet": "", "AmbientCapabilities": "",
	}
	for k, v := range want {
		if got := u.one(t, "Service", k); got != v {
			t.Errorf("[Service] %s=%s, want %s", k, got, v)
		}
	}
	if u.one(t, "Install", "WantedBy") != "multi-user.target" {
		t.Error("[Install] WantedBy=multi-user.target is missing")
	}
	// No capability, so every port must be unprivileged.
	for _, p := range []int{s.shimPort, s.statusPort} {
		if p < 1024 {
			t.Errorf("port %d needs CAP_NET_BIND_SERVICE, which the unit does not grant", p)
		}
	}

	start := strings.Fields(u.one(t, "Service", "ExecStart"))
	if !slices.Equal(start, []string{installedBinary, "run", "--config", installedCaddyfile}) {
		t.Errorf("ExecStart=%s", strings.Join(start, " "))
	}
	reload := strings.Fields(u.one(t, "Service", "ExecReload"))
	if len(reload) < 4 || reload[0] != installedBinary || reload[1] != "reload" ||
		!slices.Contains(reload, "--force") || reload[slices.Index(reload, "--config")+1] != installedCaddyfile {
		t.Errorf("ExecReload=%s: want %s reload --config %s --force (a rotated secret leaves the JSON config unchanged)",
			strings.Join(reload, " "), installedBinary, installedCaddyfile)
	}

	// LoadCredential= IDs are exactly what the Caddyfile reads from the
	// credentials directory, whose default is this unit's.
	var ids []string
	for _, lc := range u["Service"]["LoadCredential"] {
		id, src, ok := strings.Cut(lc, ":")
		if !ok || !filepath.IsAbs(src) {
			t.Errorf("LoadCredential=%s: want <id>:<absolute path>", lc)
		}
		ids = append(ids, id)
	}
	var read []string
	for _, m := range credentialsDirPlaceholder.FindAllStringSubmatch(caddyfile, -1) {
		read = append(read, m[2])
		if m[1] != "/run/credentials/"+unitName {
			t.Errorf("%s: default credentials directory %q, want /run/credentials/%s", systemdCaddyfile, m[1], unitName)
		}
	}
	slices.Sort(ids)
	slices.Sort(read)
	read = slices.Compact(read)
	if len(ids) == 0 || !slices.Equal(ids, read) {
		t.Errorf("LoadCredential= IDs %v, but the Caddyfile reads %v from $CREDENTIALS_DIRECTORY", ids, read)
	}
	var files int
	for _, c := range credentials(t, s.shim) {
		files += len(secretFiles(t, c))
	}
	if files != len(credentialsDirPlaceholder.FindAllString(caddyfile, -1)) {
		t.Errorf("%s: every secret should come from {file.{$CREDENTIALS_DIRECTORY}/…}", systemdCaddyfile)
	}

	// Caddy's data in the StateDirectory, the admin socket in the
	// RuntimeDirectory: the only writable places under ProtectSystem=strict.
	state := u.one(t, "Service", "StateDirectory")
	env := strings.Fields(strings.Join(u["Service"]["Environment"], " "))
	if !slices.Contains(env, "XDG_DATA_HOME=%S/"+state) {
		t.Errorf("Environment=%v: want XDG_DATA_HOME=%%S/%s (the StateDirectory)", env, state)
	}
	if cfg.Storage != nil {
		t.Errorf("%s sets storage %+v: leave it to XDG_DATA_HOME, the StateDirectory", systemdCaddyfile, *cfg.Storage)
	}
	if dir, rt := adminSocketDir(t, cfg), u.one(t, "Service", "RuntimeDirectory"); dir != "/run/"+rt {
		t.Errorf("admin socket in %s, but RuntimeDirectory=%s (/run/%s) is the only writable place for it", dir, rt, rt)
	}
}

// systemdAnalyze finds systemd-analyze, skipping without it (failing in CI).
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	return shimtest.Tool(t, "systemd", "systemd-analyze")
}

// unitCopy writes the unit, with the installed binary's path replaced by a
// real binary, under its own name in a temporary directory.
func unitCopy(t *testing.T) string {
	t.Helper()
	unit := strings.ReplaceAll(readFile(t, systemdUnitFile), installedBinary, shimBinary(t))
	p := filepath.Join(t.TempDir(), filepath.Base(systemdUnitFile))
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSystemdAnalyzeVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	p := unitCopy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, "verify", p).CombinedOutput()
	unitName := filepath.Base(p)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		if strings.Contains(line, unitName) || strings.Contains(line, p) {
			t.Errorf("systemd-analyze verify: %s", line)
		} else {
			t.Logf("systemd-analyze verify (not about this unit): %s", line)
		}
	}
	if err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdAnalyzeSecurity keeps the unit's hardening from regressing:
// systemd-analyze rates it 1.5 ("OK"); fail above 2.0.
func TestSystemdAnalyzeSecurity(t *testing.T) {
	sa := systemdAnalyze(t)
	p := unitCopy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, "security", "--offline=yes", "--threshold=20", "--no-pager", p).CombinedOutput()
	overall := regexp.MustCompile(`Overall exposure level for \S+: [0-9.]+ \S+`).Find(out)
	t.Logf("%s", overall)
	if err != nil {
		t.Errorf("systemd-analyze security: %v (threshold 2.0)\n%s", err, out)
	}
}

// ---------------------------------------------------------------------------
// Provisioning: caddy.Validate with fake secrets, placeholders and all.

// k8sTestCaddyfile rewrites the Kubernetes Caddyfile's in-pod paths to dir:
// secrets (written from the Secret template, plus extra), storage and the
// admin socket.
func k8sTestCaddyfile(t *testing.T, ex k8sExample, dir string, secrets map[string]string) (caddyfile string, secretDir, storageDir string) {
	t.Helper()
	caddyfile = string(ex.caddyfile)
	secretDir = filepath.Join(dir, "secrets")
	storageDir = filepath.Join(dir, "data", "caddy")
	if err := os.MkdirAll(secretDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range ex.secret.StringData {
		if s, ok := secrets[k]; ok {
			v = s
		}
		if err := os.WriteFile(filepath.Join(secretDir, k), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	replace := func(old, new string) {
		if !strings.Contains(caddyfile, old) {
			t.Fatalf("%s does not contain %q", k8sCaddyfile, old)
		}
		caddyfile = strings.ReplaceAll(caddyfile, old, new)
	}
	secretMount := ""
	for _, c := range credentials(t, ex.sites.shim) {
		for _, f := range secretFiles(t, c) {
			secretMount = path.Dir(f)
		}
	}
	replace(secretMount+"/", secretDir+"/")
	if ex.cfg.Storage != nil {
		replace(" "+ex.cfg.Storage.Root+"\n", " "+storageDir+"\n")
	}
	adminDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(adminDir, 0o700); err != nil {
		t.Fatal(err)
	}
	replace("unix/"+adminSocketDir(t, ex.cfg)+"/", "unix/"+adminDir+"/")
	return caddyfile, secretDir, storageDir
}

func validate(t *testing.T, name string, caddyfile string) error {
	t.Helper()
	out, _ := adapt(t, name, []byte(caddyfile))
	var cfg caddy.Config
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}

// TestStatusPages checks where each example's status page gets its evidence:
// in Kubernetes, a fleet of pods with short-lived storage, from Prometheus
// (the same answer from every pod, surviving rollouts); on a host, from the
// shim's own storage.
func TestStatusPages(t *testing.T) {
	ex := loadK8s(t)
	h := handlerFor(ex.sites.status, "/kustom-shim/status")
	prom, _ := h["prometheus"].(string)
	u, err := url.Parse(prom)
	if prom == "" || err != nil || u.Scheme != "http" || u.Host == "" {
		t.Errorf("%s: the status page's prometheus is %q, want the cluster's Prometheus URL", k8sCaddyfile, prom)
	} else if !strings.Contains(readFile(t, readmeFile), prom) {
		t.Errorf("%s does not mention the status page's Prometheus %s", readmeFile, prom)
	}
	_, cfg := adapt(t, systemdCaddyfile, []byte(readFile(t, systemdCaddyfile)))
	if h := handlerFor(findSites(t, systemdCaddyfile, cfg).status, "/kustom-shim/status"); h["prometheus"] != nil {
		t.Errorf("%s: the status page reads Prometheus %v; the host example reads the shim's storage", systemdCaddyfile, h["prometheus"])
	}
}

func TestKubernetesCaddyfileValidates(t *testing.T) {
	ex := loadK8s(t)
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "xdg"))
	caddyfile, secretDir, _ := k8sTestCaddyfile(t, ex, dir, nil)
	_, cfg := adapt(t, k8sCaddyfile, []byte(caddyfile))
	for _, c := range credentials(t, findSites(t, k8sCaddyfile, cfg).shim) {
		for _, f := range secretFiles(t, c) {
			if path.Dir(f) != secretDir {
				t.Errorf("credential %s reads %s after rewriting, want a file in %s", c.Name, f, secretDir)
			}
		}
	}
	if err := validate(t, k8sCaddyfile, caddyfile); err != nil {
		t.Fatalf("caddy.Validate: %v", err)
	}

	// The secret files are really read: an empty key fails provisioning.
	if err := os.WriteFile(filepath.Join(secretDir, "kustom_api_key"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := validate(t, k8sCaddyfile, caddyfile)
	if err == nil || !strings.Contains(err.Error(), "kustom_api_key") {
		t.Fatalf("caddy.Validate with an empty kustom_api_key file: %v, want an error naming kustom_api_key", err)
	}
}

func TestSystemdCaddyfileValidates(t *testing.T) {
	caddyfile := readFile(t, systemdCaddyfile)
	u := parseUnit(t, readFile(t, systemdUnitFile))
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.MkdirAll(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, lc := range u["Service"]["LoadCredential"] {
		id, _, _ := strings.Cut(lc, ":")
		if err := os.WriteFile(filepath.Join(creds, id), []byte("REPLACE_ME\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "xdg"))

	// Without $CREDENTIALS_DIRECTORY (a shell), the unit's default.
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	os.Unsetenv("CREDENTIALS_DIRECTORY")
	_, cfg := adapt(t, systemdCaddyfile, []byte(caddyfile))
	for _, c := range credentials(t, findSites(t, systemdCaddyfile, cfg).shim) {
		for _, f := range secretFiles(t, c) {
			if want := "/run/credentials/" + filepath.Base(systemdUnitFile); path.Dir(f) != want {
				t.Errorf("without CREDENTIALS_DIRECTORY, credential %s reads %s, want a file in %s", c.Name, f, want)
			}
		}
	}

	// As systemd runs it.
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	_, cfg = adapt(t, systemdCaddyfile, []byte(caddyfile))
	for _, c := range credentials(t, findSites(t, systemdCaddyfile, cfg).shim) {
		for _, f := range secretFiles(t, c) {
			if path.Dir(f) != creds {
				t.Errorf("credential %s reads %s, want a file in $CREDENTIALS_DIRECTORY (%s)", c.Name, f, creds)
			}
		}
	}
	if err := validate(t, systemdCaddyfile, caddyfile); err != nil {
		t.Fatalf("caddy.Validate: %v", err)
	}
	if err := os.Remove(filepath.Join(creds, "kustom_api_key")); err != nil {
		t.Fatal(err)
	}
	err := validate(t, systemdCaddyfile, caddyfile)
	if err == nil || !strings.Contains(err.Error(), "kustom_api_key") {
		t.Fatalf("caddy.Validate without the kustom_api_key credential: %v, want an error naming kustom_api_key", err)
	}
}

// ---------------------------------------------------------------------------
// End to end: the binary runs each example in front of a stand-in for
// Kustom; a rotated key is picked up by the documented reload, and last-used
// state survives a restart.

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type shimProcess struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startShim(t *testing.T, bin string, env []string, args ...string) *shimProcess {
	t.Helper()
	p := &shimProcess{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stop sends SIGTERM, as the kubelet and systemd do, and waits.
func (p *shimProcess) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("kustom-shim did not stop within 30s of SIGTERM:\n%s", p.out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func waitHealthy(t *testing.T, p *shimProcess, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("kustom-shim exited (%v):\n%s", p.err, p.out)
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 within 30s:\n%s", url, p.out)
}

func runCommand(t *testing.T, bin string, env []string, args ...string) string {
	t.Helper()
	return runCommandCode(t, bin, env, 0, args...)
}

// runCommandCode runs the binary and fails the test unless it exits with
// want (kustom-status: 0 complete, 1 action required or calls failing, 2
// not enough evidence, 3 could not read).
func runCommandCode(t *testing.T, bin string, env []string, want int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("kustom-shim %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if code != want {
		t.Fatalf("kustom-shim %s exited %d, want %d\n%s", strings.Join(args, " "), code, want, out)
	}
	return string(out)
}

// fakePrometheus answers the fleet report's instant queries the way a
// Prometheus that scrapes a shim fleet would: observing for 8 days, and one
// row that the local shim never saw (store shop1's app calling settlement on
// api.klarna.com), so that a page showing it can only have read Prometheus.
func fakePrometheus(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/query_range" {
			// The fleet present at every step: unbroken coverage.
			start, _ := strconv.ParseFloat(r.FormValue("start"), 64)
			end, _ := strconv.ParseFloat(r.FormValue("end"), 64)
			step, _ := time.ParseDuration(r.FormValue("step"))
			if step <= 0 {
				if f, err := strconv.ParseFloat(r.FormValue("step"), 64); err == nil {
					step = time.Duration(f * float64(time.Second))
				}
			}
			var values [][2]any
			for ts := start; step > 0 && ts <= end; ts += step.Seconds() {
				values = append(values, [2]any{ts, "1"})
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"status": "success",
				"data": map[string]any{"resultType": "matrix", "result": []map[string]any{{"metric": map[string]string{}, "values": values}}}})
			return
		}
		if r.URL.Path != "/api/v1/query" {
			http.NotFound(w, r)
			return
		}
		q := r.FormValue("query")
		now := float64(time.Now().Unix())
		type sample struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		result := []sample{}
		at := func(v float64) [2]any { return [2]any{now, strconv.FormatFloat(v, 'f', -1, 64)} }
		row := map[string]string{"service": "settlement", "from_host": "api.klarna.com", "to_host": "api.kustom.co",
			"credential": "shop1", "key": "swapped"}
		switch {
		case strings.Contains(q, "kustom_shim_observing_since_timestamp_seconds"):
			result = append(result, sample{Metric: map[string]string{}, Value: at(now - 8*86400)})
		case strings.Contains(q, "kustom_shim_last_used_timestamp_seconds"),
			strings.Contains(q, "kustom_shim_last_success_timestamp_seconds"):
			result = append(result, sample{Metric: row, Value: at(now - 3600)})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"status": "success",
			"data": map[string]any{"resultType": "vector", "result": result}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

type e2eSetup struct {
	name      string
	caddyfile string   // rewritten for this machine
	env       []string // the process environment
	keyFile   string   // the kustom_api_key file the shim reads
	stateDir  string   // where Caddy's storage keeps last-used state
	reload    []string // the documented forced reload, --config rewritten
	// The stand-in for the Prometheus the status page reads, when it
	// reads one (Kubernetes); nil when it reads the shim's storage.
	prom *httptest.Server
}

func TestExamplesEndToEnd(t *testing.T) {
	bin := shimBinary(t)
	for _, name := range []string{"kubernetes", "systemd"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cfgPath := filepath.Join(dir, "Caddyfile")
			s := e2eSetup{name: name, env: []string{
				"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
				"XDG_DATA_HOME=" + filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME=" + filepath.Join(dir, "xdg-config"),
			}}
			var sitesOf sites
			switch name {
			case "kubernetes":
				ex := loadK8s(t)
				sitesOf = ex.sites
				var secretDir, storageDir string
				s.caddyfile, secretDir, storageDir = k8sTestCaddyfile(t, ex, dir, map[string]string{
					"klarna_password": "klarna-secret-1", "kustom_api_key": "kco_live_api_first",
				})
				s.keyFile = filepath.Join(secretDir, "kustom_api_key")
				s.stateDir = filepath.Join(storageDir, "kustom-shim", "last-used")
				if !strings.Contains(readFile(t, readmeFile), k8sReloadCommand) {
					t.Errorf("%s does not show %q", readmeFile, k8sReloadCommand)
				}
				s.reload = strings.Fields(k8sReloadCommand)[1:]
				prom, _ := handlerFor(sitesOf.status, "/kustom-shim/status")["prometheus"].(string)
				if prom == "" || strings.Count(s.caddyfile, "prometheus "+prom+"\n") != 1 {
					t.Fatalf("%s: the status page has no prometheus URL to replace", k8sCaddyfile)
				}
				s.prom = fakePrometheus(t)
				s.caddyfile = strings.Replace(s.caddyfile, "prometheus "+prom+"\n", "prometheus "+s.prom.URL+"\n", 1)
			case "systemd":
				s.caddyfile = readFile(t, systemdCaddyfile)
				_, cfg := adapt(t, systemdCaddyfile, []byte(s.caddyfile))
				sitesOf = findSites(t, systemdCaddyfile, cfg)
				creds := filepath.Join(dir, "credentials")
				if err := os.MkdirAll(creds, 0o700); err != nil {
					t.Fatal(err)
				}
				for id, v := range map[string]string{"klarna_password": "klarna-secret-1", "kustom_api_key": "kco_live_api_first"} {
					if err := os.WriteFile(filepath.Join(creds, id), []byte(v+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				s.env = append(s.env, "CREDENTIALS_DIRECTORY="+creds)
				s.keyFile = filepath.Join(creds, "kustom_api_key")
				s.stateDir = filepath.Join(dir, "xdg", "caddy", "kustom-shim", "last-used")
				adminDir := filepath.Join(dir, "run")
				if err := os.MkdirAll(adminDir, 0o700); err != nil {
					t.Fatal(err)
				}
				old := "unix/" + adminSocketDir(t, cfg) + "/"
				if !strings.Contains(s.caddyfile, old) {
					t.Fatalf("%s has no %q", systemdCaddyfile, old)
				}
				s.caddyfile = strings.ReplaceAll(s.caddyfile, old, "unix/"+adminDir+"/")
				u := parseUnit(t, readFile(t, systemdUnitFile))
				s.reload = strings.Fields(u.one(t, "Service", "ExecReload"))[1:]
			}
			for i, a := range s.reload {
				if a == installedCaddyfile {
					s.reload[i] = cfgPath
				}
			}
			if !slices.Contains(s.reload, cfgPath) {
				t.Fatalf("the reload command %v does not name %s", s.reload, installedCaddyfile)
			}
			runEndToEnd(t, bin, s, sitesOf, cfgPath)
		})
	}
}

func runEndToEnd(t *testing.T, bin string, s e2eSetup, orig sites, cfgPath string) {
	up := testupstream.New(t)
	shimPort, statusPort := freePort(t), freePort(t)

	// Free ports, and the stand-in for Kustom as the upstream.
	cfg := s.caddyfile
	for from, to := range map[int]int{orig.shimPort: shimPort, orig.statusPort: statusPort} {
		old := fmt.Sprintf(":%d {", from)
		if strings.Count(cfg, old) != 1 {
			t.Fatalf("%s: want one site %q", s.name, old)
		}
		cfg = strings.Replace(cfg, old, fmt.Sprintf(":%d {", to), 1)
	}
	const block = "\tkustom {\n\t\tcredential "
	if strings.Count(cfg, block) != 1 {
		t.Fatalf("%s: want one kustom block starting with a credential", s.name)
	}
	cfg = strings.Replace(cfg, block, fmt.Sprintf("\tkustom {\n\t\tupstream https://%s\n\t\ttransport http {\n\t\t\ttls_trust_pool file %s\n\t\t}\n\t\tcredential ", up.Addr, up.CAFile), 1)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, adapted := adapt(t, cfgPath, []byte(cfg))
	creds := credentials(t, findSites(t, cfgPath, adapted).shim)
	if len(creds) != 1 {
		t.Fatalf("want one credential, got %d", len(creds))
	}
	cred := creds[0]

	statusURL := fmt.Sprintf("http://127.0.0.1:%d", statusPort)
	p := startShim(t, bin, s.env, "run", "--config", cfgPath)
	waitHealthy(t, p, statusURL+"/healthz")

	// try makes one call through the shim and returns the Authorization
	// that Kustom received; an error is a failed connection.
	try := func() (string, error) {
		t.Helper()
		up.Reset()
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://localhost:%d/checkout/v3/orders/order-1", shimPort), nil)
		req.SetBasicAuth(cred.KlarnaUsername, "klarna-secret-1")
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the shim answered %d %s: %s", resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"), body)
		}
		reqs := up.Requests()
		if len(reqs) != 1 {
			t.Fatalf("the upstream received %d requests, want 1", len(reqs))
		}
		if reqs[0].Host != "api.kustom.co" {
			t.Errorf("the upstream saw Host %q, want api.kustom.co", reqs[0].Host)
		}
		return reqs[0].Header.Get("Authorization"), nil
	}
	call := func(when string) string {
		t.Helper()
		got, err := try()
		if err != nil {
			t.Fatalf("calling the shim %s: %v\n%s", when, err, p.out)
		}
		return got
	}
	if got := call("after it started"); got != "Basic kco_live_api_first" {
		t.Fatalf("Kustom received Authorization %q, want the key from the secret file", got)
	}

	get := func(path string, header ...string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, statusURL+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	if code, ct, _ := get("/kustom-shim/status"); code != 200 || !strings.HasPrefix(ct, "text/html") {
		t.Errorf("status page: %d %s", code, ct)
	}
	type statusJSON struct {
		Verdict  string `json:"verdict"`
		Source   string `json:"source"`
		Services []struct {
			Service  string  `json:"service"`
			FromHost string  `json:"from_host"`
			State    string  `json:"state"`
			LastUsed *string `json:"last_used"`
		} `json:"services"`
	}
	statusPage := func() (int, statusJSON) {
		t.Helper()
		code, _, body := get("/kustom-shim/status", "Accept", "application/json")
		var st statusJSON
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("status JSON (%d): %v\n%s", code, err, body)
		}
		return code, st
	}
	if s.prom != nil {
		// The fleet's view: the row only Prometheus knows, judged as the
		// shim judges it. The command line gives the same answer.
		code, st := statusPage()
		found := false
		for _, r := range st.Services {
			found = found || (r.Service == "settlement" && r.FromHost == "api.klarna.com" && r.State == "klarna_host")
		}
		if code != 200 || st.Source != "prometheus" || st.Verdict != "action_required" || !found {
			t.Errorf("status page from Prometheus: %d %+v", code, st)
		}
		if out := runCommandCode(t, bin, s.env, 1, "kustom-status", "--prometheus", s.prom.URL); !strings.Contains(out, "klarna_host") {
			t.Errorf("kustom-status --prometheus:\n%s", out)
		}
	}
	if code, _, body := get("/metrics"); code != 200 ||
		!strings.Contains(body, fmt.Sprintf(`kustom_shim_credentials_total{credential=%q,result="swapped"} 1`, cred.Name)) ||
		!strings.Contains(body, "kustom_shim_observing_since_timestamp_seconds ") ||
		!strings.Contains(body, fmt.Sprintf(`kustom_shim_last_success_timestamp_seconds{credential=%q,from_host="local",key="swapped",service="checkout",to_host="api.kustom.co"}`, cred.Name)) {
		t.Errorf("metrics: %d, no swapped credential counted or no evidence gauges:\n%.4000s", code, body)
	}
	// The command line reaches the running shim through the admin socket.
	// The app addresses the shim itself with its Klarna key: bridged, so
	// action is required (exit status 1).
	if out := runCommandCode(t, bin, s.env, 1, "kustom-status", "--config", cfgPath); !strings.Contains(out, "Checkout") ||
		!strings.Contains(out, "bridged") {
		t.Errorf("kustom-status:\n%s", out)
	}

	// Rotate the key. A plain reload sends the same JSON config, which
	// Caddy skips; the documented forced reload reads the file again.
	if err := os.WriteFile(s.keyFile, []byte("kco_live_api_second\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runCommand(t, bin, s.env, "reload", "--config", cfgPath)
	if got := call("after a plain reload"); got != "Basic kco_live_api_first" {
		t.Errorf("after a plain reload Kustom received %q; expected Caddy to skip the unchanged config", got)
	}
	// A changed config starts new listeners and stops the old servers in
	// the background, so right after the reload a new connection can still
	// reach an old server, or be cut as its listener closes (see "Rotating
	// a key" in README.md). Within moments every call has the new key.
	runCommand(t, bin, s.env, s.reload...)
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 1; ; attempt++ {
		got, err := try()
		if err == nil && got == "Basic kco_live_api_second" {
			if attempt > 1 {
				t.Logf("the rotated key was used from call %d after the reload", attempt)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after %v, Kustom received %q (%v), want the rotated key\n%s", s.reload, got, err, p.out)
		}
		if err != nil {
			t.Logf("call %d after the reload: %v", attempt, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range 5 {
		if got := call("after a forced reload"); got != "Basic kco_live_api_second" {
			t.Fatalf("after %v Kustom received %q again, want the rotated key", s.reload, got)
		}
	}

	// Stop as the kubelet or systemd would; last-used state is written to
	// storage and read back by the next start.
	p.stop(t)
	files, _ := filepath.Glob(filepath.Join(s.stateDir, "*.json"))
	if len(files) != 1 {
		t.Fatalf("want one last-used state file in %s, found %v\n%s", s.stateDir, files, p.out)
	}
	p = startShim(t, bin, s.env, "run", "--config", cfgPath)
	waitHealthy(t, p, statusURL+"/healthz")
	// The shim's own storage remembers the call (the admin API reads it).
	out := runCommandCode(t, bin, s.env, 1, "kustom-status", "--config", cfgPath)
	if !regexp.MustCompile(`(?m)^Checkout +local +api\.kustom\.co +` + regexp.QuoteMeta(cred.Name) + ` +swapped +bridged +\d{4}-`).MatchString(out) {
		t.Errorf("after a restart kustom-status does not remember the checkout call:\n%s", out)
	}
	if s.prom == nil {
		_, status := statusPage()
		restored := false
		for _, svc := range status.Services {
			if svc.Service == "checkout" && svc.FromHost == "local" && svc.LastUsed != nil {
				restored = true
			}
		}
		if !restored {
			t.Errorf("after a restart the status page does not remember the checkout call: %+v", status)
		}
	} else {
		// Without Prometheus the page cannot tell, and says so; it never
		// falls back to this pod's own evidence.
		s.prom.Close()
		if code, st := statusPage(); code != http.StatusServiceUnavailable || st.Verdict != "unavailable" {
			t.Errorf("status page with Prometheus down: %d %+v, want 503 unavailable", code, st)
		}
		runCommandCode(t, bin, s.env, 3, "kustom-status", "--prometheus", s.prom.URL)
	}
	p.stop(t)
}

// TestConfigsBoundBodyReads: every config a user starts from sets a body
// read timeout on every server, so that a client that sends its headers and
// then trickles its body cannot hold a connection and a goroutine forever,
// and keeps its admin API off TCP.
func TestConfigsBoundBodyReads(t *testing.T) {
	for _, name := range []string{"../Caddyfile.example", k8sCaddyfile, systemdCaddyfile} {
		body, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := adapt(t, name, body)
		var cfg struct {
			Admin struct {
				Listen string `json:"listen"`
			} `json:"admin"`
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						ReadTimeout int64 `json:"read_timeout"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(cfg.Admin.Listen, "unix/") {
			t.Errorf("%s: admin API on %q, want a unix socket", name, cfg.Admin.Listen)
		}
		for srv, s := range cfg.Apps.HTTP.Servers {
			if s.ReadTimeout <= 0 || s.ReadTimeout > int64(time.Minute) {
				t.Errorf("%s: server %s has read_timeout %v, want a bound of at most a minute", name, srv, time.Duration(s.ReadTimeout))
			}
		}
	}
}
