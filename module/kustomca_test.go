package module_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/spf13/cobra"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testcerts"
	"github.com/kustomshim/kustomshim/internal/testupstream"
	"github.com/kustomshim/kustomshim/module"
)

var wantCAHosts = []string{
	"api-na.klarna.com", "api-na.playground.klarna.com", "api-oc.klarna.com", "api-oc.playground.klarna.com",
	"api.klarna.com", "api.kustom.co", "api.playground.klarna.com", "api.playground.kustom.co",
}

func sorted(s []string) []string {
	sort.Strings(s)
	return s
}

// constrainedRoot makes the root as kustom-ca does and parses it back.
func constrainedRoot(t *testing.T, extra ...string) (*x509.Certificate, crypto.Signer, []byte) {
	t.Helper()
	hosts, err := module.CAHosts(extra)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := module.NewConstrainedRoot(hosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("root.crt and root.key do not belong together: %v", err)
	}
	root, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return root, pair.PrivateKey.(crypto.Signer), certPEM
}

// issue signs tmpl with parent's key and returns the certificate and its key.
func issue(t *testing.T, tmpl, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
		tmpl.NotAfter = time.Now().Add(12 * time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// caddyLikeIntermediate is what Caddy's internal CA makes below a root given
// in the config (smallstep's default intermediate template): a CA with path
// length 0 and no name constraints of its own.
func caddyLikeIntermediate(t *testing.T, root *x509.Certificate, rootKey crypto.Signer) (*x509.Certificate, *ecdsa.PrivateKey) {
	return issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Caddy Local Authority - ECC Intermediate"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, root, rootKey)
}

// leafFor is a TLS server certificate for names (DNS names or IP addresses).
func leafFor(t *testing.T, parent *x509.Certificate, parentKey crypto.Signer, names ...string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	cert, key, err := testcerts.SignLeaf(parent, parentKey, names...)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestKustomCAHosts: the permitted list is the host map's eight hosts plus
// valid extras; anything that would widen the root is refused.
func TestKustomCAHosts(t *testing.T) {
	got, err := module.CAHosts(nil)
	if err != nil || !reflect.DeepEqual(got, wantCAHosts) {
		t.Fatalf("module.CAHosts(nil) = %v, %v; want %v", got, err, wantCAHosts)
	}
	got, err = module.CAHosts([]string{"API-NA.Kustom.co.", "api.kustom.co", "eu.api.example"})
	if err != nil {
		t.Fatal(err)
	}
	if want := sorted(append([]string{"api-na.kustom.co", "eu.api.example"}, wantCAHosts...)); !reflect.DeepEqual(got, want) {
		t.Errorf("CAHosts with extras = %v", got)
	}
	for h, why := range map[string]string{
		"127.0.0.1":             "IP address",
		"::1":                   "IP address",
		"[::1]":                 "IP address",
		"10.1":                  "IP address",
		"*.klarna.com":          "wildcard",
		"com":                   "single label",
		"localhost":             "single label",
		"co.uk":                 "public suffix",
		"":                      "empty",
		"https://api.kustom.co": "not a host name",
		"api.kustom.co:443":     "not a host name",
		"api..kustom.co":        "empty label",
		".kustom.co":            "empty label",
		"-api.kustom.co":        "starts or ends",
		"api.kustom.co/x":       "not a host name",
		"api kustom.co":         "not a host name",
	} {
		if _, err := module.CAHosts([]string{h}); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("--host %q: error %v, want one that says %q", h, err, why)
		}
	}
	if _, _, err := module.NewConstrainedRoot(nil, time.Now()); err == nil {
		t.Error("a root with no permitted name (which would permit every name) was made")
	}
}

// TestConstrainedRootCertificate: the root is what the command promises and
// what Caddy can load: ECDSA P-256, a CA with room for one intermediate,
// critical name constraints permitting exactly CAHosts and excluding all of
// IPv4 and IPv6, and a key Caddy's own loader accepts as its pair.
func TestConstrainedRootCertificate(t *testing.T) {
	root, _, certPEM := constrainedRoot(t)
	pub, ok := root.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key %T, want ECDSA P-256", root.PublicKey)
	}
	if !root.IsCA || !root.BasicConstraintsValid || root.MaxPathLen != 1 || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root IsCA=%v MaxPathLen=%d KeyUsage=%v", root.IsCA, root.MaxPathLen, root.KeyUsage)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if life := root.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour {
		t.Errorf("root expires in %s: Caddy never renews a configured root", life)
	}
	if !reflect.DeepEqual(root.PermittedDNSDomains, wantCAHosts) || !root.PermittedDNSDomainsCritical {
		t.Errorf("permitted %v critical=%v", root.PermittedDNSDomains, root.PermittedDNSDomainsCritical)
	}
	var excluded []string
	for _, n := range root.ExcludedIPRanges {
		excluded = append(excluded, n.String())
	}
	if !reflect.DeepEqual(excluded, []string{"0.0.0.0/0", "::/0"}) {
		t.Errorf("excluded IP ranges %v", excluded)
	}
	nameConstraints := asn1.ObjectIdentifier{2, 5, 29, 30}
	found := false
	for _, ext := range root.Extensions {
		if ext.Id.Equal(nameConstraints) {
			found = true
			if !ext.Critical {
				t.Error("the name constraints extension is not critical")
			}
		}
	}
	if !found {
		t.Error("no name constraints extension")
	}

	// Caddy's pki app loads root { cert … key … } with KeyPair.Load, which
	// also checks that the key belongs to the certificate.
	dir := t.TempDir()
	var out bytes.Buffer
	if err := module.WriteKustomCA(&out, dir, nil, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	chain, signer, err := caddypki.KeyPair{Certificate: filepath.Join(dir, "root.crt"), PrivateKey: filepath.Join(dir, "root.key")}.Load()
	if err != nil || len(chain) != 1 || signer == nil {
		t.Fatalf("Caddy cannot load the written root: %v", err)
	}
	if bytes.Equal(chain[0].Raw, root.Raw) || !bytes.Contains(certPEM, []byte("BEGIN CERTIFICATE")) {
		t.Error("two runs made the same root")
	}
}

// TestConstrainedRootGoVerifier: Go's x509 verifier, as a Go app trusting only
// the root uses it, accepts leaves for the API hosts and rejects a leaf for
// any other name or for an IP address, whether the root signed it directly
// or through an intermediate without constraints of its own (as Caddy's is).
func TestConstrainedRootGoVerifier(t *testing.T) {
	root, rootKey, _ := constrainedRoot(t, "api-na.kustom.co")
	inter, interKey := caddyLikeIntermediate(t, root, rootKey)
	roots := x509.NewCertPool()
	roots.AddCert(root)
	type signer struct {
		name   string
		parent *x509.Certificate
		key    crypto.Signer
		inters []*x509.Certificate
	}
	for _, s := range []signer{{"direct", root, rootKey, nil}, {"via-intermediate", inter, interKey, []*x509.Certificate{inter}}} {
		t.Run(s.name, func(t *testing.T) {
			verify := func(names ...string) error {
				leaf, _ := leafFor(t, s.parent, s.key, names...)
				pool := x509.NewCertPool()
				for _, c := range s.inters {
					pool.AddCert(c)
				}
				chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, DNSName: names[0]})
				if err == nil && !chains[0][len(chains[0])-1].Equal(root) {
					t.Fatalf("%v verified to another root", names)
				}
				return err
			}
			for _, h := range append(wantCAHosts, "api-na.kustom.co", "x.api.klarna.com") {
				if err := verify(h); err != nil {
					t.Errorf("leaf for %s rejected: %v", h, err)
				}
			}
			for _, names := range [][]string{
				{"example.com"}, {"127.0.0.1"}, {"::1"}, {"10.0.0.5"},
				{"pay.klarna.com"}, {"klarna.com"}, {"evilapi.klarna.com"}, {"api.klarna.com.example.com"},
				{"api.klarna.com", "127.0.0.1"}, // one bad name spoils the leaf
				{"api.klarna.com", "example.com"},
			} {
				err := verify(names...)
				var inv x509.CertificateInvalidError
				if !errors.As(err, &inv) || inv.Reason != x509.CANotAuthorizedForThisName {
					t.Errorf("leaf for %v: %v, want a name constraint violation", names, err)
				}
			}
		})
	}
}

// serveLeaves runs a TLS server on 127.0.0.1 that presents the chain in
// bySNI for the requested name, and fallback to a client that sends no SNI
// (one that dials an IP address). It answers "ok".
func serveLeaves(t *testing.T, bySNI map[string]tls.Certificate, fallback tls.Certificate) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		ReadHeaderTimeout: 5 * time.Second,
		// curl hangs up on a chain it rejects; that is the point here.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	cfg := &tls.Config{GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if c, ok := bySNI[hi.ServerName]; ok {
			return &c, nil
		}
		return &fallback, nil
	}}
	go srv.Serve(tls.NewListener(ln, cfg))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func tlsCert(leaf *x509.Certificate, key crypto.Signer, inters ...*x509.Certificate) tls.Certificate {
	c := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, i := range inters {
		c.Certificate = append(c.Certificate, i.Raw)
	}
	return c
}

// runCurl runs Debian's curl against url, trusting only rootFile, with every
// name resolved to 127.0.0.1 by --resolve and no proxy from the environment.
func runCurl(t *testing.T, curl string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "--noproxy", "*", "--max-time", "15"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running curl: %v", err)
	}
	return string(out), 0
}

// TestKustomCACurl: OpenSSL as Debian's curl uses it (PHP's curl is the
// same library) enforces the constraints too: with --cacert root.crt only,
// a leaf for api.klarna.com is accepted, and leaves for example.com and for
// 127.0.0.1 signed through the same root fail with a certificate error (exit
// 60), directly and through an intermediate.
func TestKustomCACurl(t *testing.T) {
	curl := shimtest.Tool(t, "curl", "curl")
	root, rootKey, certPEM := constrainedRoot(t)
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(rootFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	inter, interKey := caddyLikeIntermediate(t, root, rootKey)
	for _, mode := range []string{"direct", "via-intermediate"} {
		t.Run(mode, func(t *testing.T) {
			parent, key := root, rootKey
			var inters []*x509.Certificate
			if mode == "via-intermediate" {
				parent, key, inters = inter, interKey, []*x509.Certificate{inter}
			}
			good, goodKey := leafFor(t, parent, key, "api.klarna.com")
			bad, badKey := leafFor(t, parent, key, "example.com")
			ip, ipKey := leafFor(t, parent, key, "127.0.0.1")
			port := serveLeaves(t, map[string]tls.Certificate{
				"api.klarna.com": tlsCert(good, goodKey, inters...),
				"example.com":    tlsCert(bad, badKey, inters...),
			}, tlsCert(ip, ipKey, inters...))

			out, code := runCurl(t, curl, "--cacert", rootFile, "--resolve", fmt.Sprintf("api.klarna.com:%d:127.0.0.1", port),
				fmt.Sprintf("https://api.klarna.com:%d/", port))
			if code != 0 || out != "ok" {
				t.Fatalf("curl to api.klarna.com: exit %d: %s", code, out)
			}
			for _, c := range []struct{ url, resolve, violation string }{
				{fmt.Sprintf("https://example.com:%d/", port), fmt.Sprintf("example.com:%d:127.0.0.1", port), "permitted subtree violation"},
				{fmt.Sprintf("https://127.0.0.1:%d/", port), "", "excluded subtree violation"},
			} {
				args := []string{"--cacert", rootFile}
				if c.resolve != "" {
					args = append(args, "--resolve", c.resolve)
				}
				out, code := runCurl(t, curl, append(args, c.url)...)
				if code != 60 || !strings.Contains(out, "SSL certificate problem") || !strings.Contains(out, c.violation) {
					t.Errorf("curl %s: exit %d (want 60, a certificate error naming %q): %s", c.url, code, c.violation, out)
				}
			}
		})
	}
}

// kustomCAPKILines runs the command's logic into dir and returns the pki
// block it printed, as an operator would copy it.
func kustomCAPKILines(t *testing.T, dir string) (pki, out string) {
	t.Helper()
	var buf bytes.Buffer
	if err := module.WriteKustomCA(&buf, dir, nil, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	out = buf.String()
	start := strings.Index(out, "\npki {\n")
	end := strings.Index(out[start+1:], "\n}\n")
	if start < 0 || end < 0 {
		t.Fatalf("no pki block in the output:\n%s", out)
	}
	return out[start+1 : start+1+end+3], out
}

// handshake dials 127.0.0.1:port (through a CONNECT to the shim when
// viaConnect), does a TLS handshake for serverName, and verifies the chain the
// server sent as Go's TLS client does, trusting only roots. It returns that
// chain, also when it does not verify.
func handshake(port int, viaConnect bool, serverName string, roots *x509.CertPool) ([]*x509.Certificate, error) {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if viaConnect {
		fmt.Fprintf(conn, "CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n", serverName, serverName)
		// The shim sends nothing after its answer until the client hello.
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("CONNECT: %s", resp.Status)
		}
	}
	var chain []*x509.Certificate
	tc := tls.Client(conn, &tls.Config{ServerName: serverName, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			inters := x509.NewCertPool()
			for _, c := range chain[1:] {
				inters.AddCert(c)
			}
			_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, DNSName: serverName})
			return err
		}})
	return chain, tc.Handshake()
}

// TestKustomCACaddy runs a real Caddy with the printed pki lines: the
// certificates `tls internal` and intercept_connect serve for api.klarna.com
// come from the constrained root (Go and curl trusting only root.crt accept
// them, and the chain Caddy sends ends at that root), while a site for
// example.com on the same Caddy gets nothing a client trusting the root
// accepts.
func TestKustomCACaddy(t *testing.T) {
	t.Setenv("KS_KLARNA_PW", klarnaPassword)
	t.Setenv("KS_KUSTOM_KEY", kustomKey)
	// A space in the path: the printed lines must quote it.
	dir := filepath.Join(t.TempDir(), "kustom ca")
	pki, _ := kustomCAPKILines(t, dir)
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(rootPEM)
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)

	shim := shimtest.New(t)
	up := testupstream.New(t)
	ports := shim.StartPorts(t, make([]int, 2), func(p []int) string {
		return shim.Globals(indentGlobal(pki)) + fmt.Sprintf(`
https://api.klarna.com:%[1]d, https://example.com:%[1]d {
	bind 127.0.0.1
	tls internal
	respond "ok"
}
http://:%[2]d {
	bind 127.0.0.1
%[3]s}
`, p[0], p[1], shopKustom(up, "default_target none\nintercept_connect\n"))
	})
	port, gw := ports[0], ports[1]

	var chain []*x509.Certificate
	shimtest.WaitFor(t, "a handshake for api.klarna.com trusting only the constrained root", 20*time.Second, func() bool {
		chain, err = handshake(port, false, "api.klarna.com", roots)
		return err == nil
	})
	checkCaddyChain(t, chain, root, "api.klarna.com")

	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
		},
	}}
	resp, err := c.Get(fmt.Sprintf("https://api.klarna.com:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Errorf("body %q", body)
	}

	// example.com: Caddy's internal CA signs it all the same (smallstep does
	// not apply the root's constraints in Caddy's embedded use), and no
	// client trusting the constrained root accepts what it signed.
	shimtest.WaitFor(t, "Caddy's example.com certificate, rejected for its name", 20*time.Second, func() bool {
		_, err := handshake(port, false, "example.com", roots)
		var inv x509.CertificateInvalidError
		return errors.As(err, &inv) && inv.Reason == x509.CANotAuthorizedForThisName
	})

	// intercept_connect (HTTPS_PROXY form) issues from the same root.
	shimtest.WaitFor(t, "a handshake inside a CONNECT tunnel for api.playground.klarna.com", 20*time.Second, func() bool {
		chain, err = handshake(gw, true, "api.playground.klarna.com", roots)
		return err == nil
	})
	checkCaddyChain(t, chain, root, "api.playground.klarna.com")

	curl := shimtest.Tool(t, "curl", "curl")
	rootFile := filepath.Join(dir, "root.crt")
	out, code := runCurl(t, curl, "--cacert", rootFile, "--resolve", fmt.Sprintf("api.klarna.com:%d:127.0.0.1", port),
		fmt.Sprintf("https://api.klarna.com:%d/", port))
	if code != 0 || out != "ok" {
		t.Errorf("curl to Caddy's api.klarna.com: exit %d: %s", code, out)
	}
	out, code = runCurl(t, curl, "--cacert", rootFile, "--resolve", fmt.Sprintf("example.com:%d:127.0.0.1", port),
		fmt.Sprintf("https://example.com:%d/", port))
	if code == 0 {
		t.Errorf("curl accepted Caddy's example.com: %s", out)
	}
	kustomFlow(up)
	out, code = runCurl(t, curl, "--proxy", fmt.Sprintf("http://127.0.0.1:%d", gw), "--noproxy", "", "--cacert", rootFile,
		"-o", "/dev/null", "-w", "%{http_code}", "-u", klarnaUser+":"+klarnaPassword, "https://api.klarna.com/checkout/v3/orders/ord-1")
	if code != 0 {
		t.Errorf("curl through intercept_connect: exit %d: %s", code, out)
	}
}

// indentGlobal indents printed lines for the global options block.
func indentGlobal(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n\t")
}

// TestKustomCACaddySwitch: a Caddy that already ran with its own generated
// local CA keeps serving the leaf and intermediate its old root signed after
// the pki lines are added, so apps trusting only the new root fail; once
// pki/authorities/local and certificates/local are removed from its storage,
// as the command's output says, it serves a chain of the new root.
func TestKustomCACaddySwitch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	pki, out := kustomCAPKILines(t, dir)
	for _, s := range []string{"pki/authorities/local", "certificates/local"} {
		if !strings.Contains(out, s) {
			t.Errorf("the output does not say to remove %s:\n%s", s, out)
		}
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)

	shim := shimtest.New(t)
	port := 0 // each start keeps the port of the one before if it can
	start := func(globals, what string, wantVerified bool) {
		t.Helper()
		port = shim.StartPort(t, port, func(port int) string {
			return shim.Globals(globals) + fmt.Sprintf(`
https://api.klarna.com:%d {
	bind 127.0.0.1
	tls internal
	respond "ok"
}
`, port)
		})
		var err error
		shimtest.WaitFor(t, what, 20*time.Second, func() bool {
			_, err = handshake(port, false, "api.klarna.com", roots)
			if wantVerified {
				return err == nil
			}
			var inv x509.UnknownAuthorityError
			return errors.As(err, &inv)
		})
		if err := caddy.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	start("", "a leaf from Caddy's own root, which the constrained root does not verify", false)
	start(indentGlobal(pki), "the stale leaf, still served after the pki lines were added", false)
	for _, d := range []string{"pki/authorities/local", "certificates/local"} {
		if err := os.RemoveAll(filepath.Join(shim.Dir, filepath.FromSlash(d))); err != nil {
			t.Fatal(err)
		}
	}
	start(indentGlobal(pki), "a leaf from the constrained root after the old CA state was removed", true)
}

// checkCaddyChain: the chain Caddy sends verifies, for name, against the
// constrained root alone; it is leaf + Caddy's intermediate, the
// intermediate has no constraints of its own (the root's bind it), and
// Caddy's leaf names only name.
func checkCaddyChain(t *testing.T, chain []*x509.Certificate, root *x509.Certificate, name string) {
	t.Helper()
	if len(chain) != 2 {
		t.Fatalf("Caddy sent %d certificates, want leaf and intermediate", len(chain))
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inters.AddCert(chain[1])
	verified, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, DNSName: name})
	if err != nil {
		t.Fatalf("Caddy's chain for %s does not verify against the constrained root: %v", name, err)
	}
	if v := verified[0]; len(v) != 3 || !v[2].Equal(root) || !v[1].Equal(chain[1]) {
		t.Errorf("verified chain %d long, not leaf → Caddy's intermediate → constrained root", len(v))
	}
	if err := chain[1].CheckSignatureFrom(root); err != nil {
		t.Errorf("Caddy's intermediate was not signed by the constrained root: %v", err)
	}
	if len(chain[1].PermittedDNSDomains) != 0 {
		t.Logf("Caddy's intermediate has constraints of its own: %v", chain[1].PermittedDNSDomains)
	}
	if !reflect.DeepEqual(chain[0].DNSNames, []string{name}) || len(chain[0].IPAddresses) != 0 {
		t.Errorf("Caddy's leaf names %v %v, want only %s", chain[0].DNSNames, chain[0].IPAddresses, name)
	}
}

// TestKustomCACommand runs the registered `kustom-ca` command through its
// cobra flags: it writes root.crt and a 0600 root.key in a new 0700
// directory, prints the pki lines, refuses to overwrite without --force,
// replaces with --force, and rejects a bad --host before writing anything.
func TestKustomCACommand(t *testing.T) {
	run := func(args ...string) (string, error) {
		t.Helper()
		c, ok := caddycmd.Commands()["kustom-ca"]
		if !ok {
			t.Fatal("kustom-ca is not registered")
		}
		cmd := &cobra.Command{Use: c.Name, SilenceUsage: true, SilenceErrors: true}
		c.CobraFunc(cmd)
		cmd.SetArgs(args)
		// The command prints to os.Stdout, as a user sees it.
		f, err := os.CreateTemp(t.TempDir(), "stdout")
		if err != nil {
			t.Fatal(err)
		}
		stdout := os.Stdout
		os.Stdout = f
		err = cmd.Execute()
		os.Stdout = stdout
		f.Close()
		out, _ := os.ReadFile(f.Name())
		return string(out), err
	}
	dir := filepath.Join(t.TempDir(), "ca")
	out, err := run("--out", dir, "--host", "api-na.kustom.co")
	if err != nil {
		t.Fatalf("kustom-ca: %v\n%s", err, out)
	}
	certPath, keyPath := filepath.Join(dir, "root.crt"), filepath.Join(dir, "root.key")
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, keyPath: 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v, %v; want %v", p, fi.Mode(), err, want)
		}
	}
	wantPKI := fmt.Sprintf("pki {\n\tca local {\n\t\troot {\n\t\t\tcert %s\n\t\t\tkey %s\n\t\t}\n\t}\n}\n", certPath, keyPath)
	for _, s := range []string{wantPKI, "tls internal", "intercept_connect", "trust " + certPath, "  api-na.kustom.co\n", "  api.klarna.com\n"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Error("the key was printed")
	}
	crt, _ := os.ReadFile(certPath)
	block, _ := pem.Decode(crt)
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !reflect.DeepEqual(root.PermittedDNSDomains, sorted(append([]string{"api-na.kustom.co"}, wantCAHosts...))) {
		t.Errorf("root.crt permits %v (%v)", root.PermittedDNSDomains, err)
	}

	// No overwrite: the files stay as they were.
	if _, err := run("--out", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second run without --force: %v", err)
	}
	if again, _ := os.ReadFile(certPath); !bytes.Equal(again, crt) {
		t.Error("root.crt was overwritten without --force")
	}
	os.Remove(certPath) // a lone key is refused as well
	if _, err := run("--out", dir); err == nil {
		t.Error("run over an existing root.key without --force succeeded")
	}
	os.Chmod(keyPath, 0o644)
	if out, err := run("--out", dir, "--force"); err != nil {
		t.Fatalf("--force: %v\n%s", err, out)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode() != 0o600 {
		t.Errorf("root.key after --force: %v %v", fi.Mode(), err)
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Errorf("after --force the files do not pair: %v", err)
	}

	// A bad --host fails before anything is written.
	for _, h := range []string{"127.0.0.1", "*.klarna.com", "com", "https://api.kustom.co"} {
		bad := filepath.Join(t.TempDir(), "bad")
		if _, err := run("--out", bad, "--host", h); err == nil || !strings.Contains(err.Error(), h) {
			t.Errorf("--host %s: %v", h, err)
		}
		if _, err := os.Stat(bad); err == nil {
			t.Errorf("--host %s: %s was created", h, bad)
		}
	}
	if _, err := run("--host", "api-na.kustom.co"); err == nil || !strings.Contains(err.Error(), "--out") {
		t.Errorf("without --out: %v", err)
	}
}
