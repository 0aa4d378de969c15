package module

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/net/publicsuffix"
)

// Why a root of our own: in the DNS-override and HTTPS_PROXY forms every app
// must trust the root that Caddy's internal CA issues from. Caddy's generated
// root is unconstrained, so whoever gets its key (it sits in Caddy's storage
// next to the shim) can mint a certificate for any bank, any cloud API, any
// internal address, and every app that trusts it believes it. A root whose
// X.509 name constraints (RFC 5280 §4.2.1.10, marked critical so a verifier
// that cannot enforce them must reject the chain) permit only the API hosts
// the shim answers for limits that damage to those hosts. Caddy keeps making
// and renewing its own intermediate below the root: name constraints on a
// root bind every certificate beneath it, so the intermediate needs none.

const (
	// KustomCACertFile and KustomCAKeyFile are the names kustom-ca writes in
	// its --out directory.
	KustomCACertFile = "root.crt"
	KustomCAKeyFile  = "root.key"

	// kustomCARootLifetime is Caddy's own root lifetime. Caddy never renews a
	// root given to it in the config, and refuses to start once the root
	// expires sooner than one intermediate lifetime (7 days): a short root
	// would turn into an outage.
	kustomCARootLifetime = 10 * 360 * 24 * time.Hour

	// kustomCACommonName names the root in trust-store listings, so that an
	// operator can tell what it is and that it is limited.
	kustomCACommonName = "kustom-shim constrained root (Klarna/Kustom API hosts only)"
)

// CAHosts is the list of host names the constrained root may sign for: the
// six Klarna API hosts of DefaultHostMap, the two Kustom hosts (an app that
// already switched, or a `map` to-host, is served by the shim on its own
// name) and extra, each checked by CheckCAHost. The list is lowercase, without
// trailing dots, sorted and free of duplicates.
func CAHosts(extra []string) ([]string, error) {
	seen := map[string]bool{KustomProduction: true, KustomPlayground: true}
	for from, to := range DefaultHostMap() {
		seen[from], seen[to] = true, true
	}
	for _, h := range extra {
		if err := CheckCAHost(h); err != nil {
			return nil, fmt.Errorf("--host %q: %v", h, err)
		}
		seen[NormalizeHost(h)] = true
	}
	out := make([]string, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out, nil
}

// CheckCAHost accepts a bare DNS host name for a name constraint. It refuses
// what would widen the root beyond one API host: an IP address (the root
// excludes every IP range, and an app should not reach an API by address), a
// wildcard (a DNS name constraint covers subdomains already), a single label
// or a public suffix ("com", "co.uk": that would permit every host under it),
// and anything that is not a host name (scheme, port, path, empty labels).
func CheckCAHost(h string) error {
	if strings.Contains(h, "*") {
		return errors.New("a wildcard: give the bare name (a name constraint covers its subdomains already)")
	}
	if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
		return errors.New("an IP address: the root permits host names only and excludes every IP address")
	}
	if err := checkHostname(h); err != nil {
		return err
	}
	n := NormalizeHost(h)
	labels := strings.Split(n, ".")
	for _, l := range labels {
		if l == "" {
			return errors.New("not a host name (empty label)")
		}
		if len(l) > 63 {
			return errors.New("not a host name (label longer than 63 characters)")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return errors.New("not a host name (label starts or ends with '-')")
		}
	}
	if len(labels) < 2 {
		return errors.New("a single label: it would permit every host under it; give the full API host name")
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return errors.New("looks like an IP address (numeric top-level label)")
	}
	if ps, _ := publicsuffix.PublicSuffix(n); ps == n {
		return errors.New("a public suffix: it would permit every host under it; give the full API host name")
	}
	return nil
}

// NewConstrainedRoot makes a self-signed ECDSA P-256 root certificate, valid
// from an hour before now (for clock skew) until kustomCARootLifetime (3600
// days, Caddy's own) after it, whose critical name constraints permit exactly
// the DNS names hosts (and, by X.509's rule, their subdomains) and exclude every
// IPv4 and IPv6 address, so that a leaf naming example.com or 127.0.0.1 is
// rejected by any verifier even though this root signed it. MaxPathLen 1
// leaves room for Caddy's intermediate and no more. It returns the
// certificate and the PKCS#8 private key, both PEM.
func NewConstrainedRoot(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("no host to permit: a root without permitted names would permit every name")
	}
	for _, h := range hosts {
		if err := CheckCAHost(h); err != nil {
			return nil, nil, fmt.Errorf("host %q: %v", h, err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	permitted := make([]string, len(hosts))
	for i, h := range hosts {
		permitted[i] = NormalizeHost(h)
	}
	_, all4, _ := net.ParseCIDR("0.0.0.0/0")
	_, all6, _ := net.ParseCIDR("::/0")
	start := now.Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: kustomCACommonName, Organization: []string{"kustom-shim"}},
		// An hour back: a client whose clock lags the shim's a little must
		// not see a root from the future.
		NotBefore:             start.Add(-time.Hour),
		NotAfter:              start.Add(kustomCARootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,

		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         permitted,
		ExcludedIPRanges:            []*net.IPNet{all4, all6},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// KustomCAPKIOption is the Caddyfile global option that makes Caddy's
// default internal CA ("local", the one `tls internal` and intercept_connect
// issue from) sign with the given root instead of one it generates.
func KustomCAPKIOption(certPath, keyPath string) string {
	return fmt.Sprintf("pki {\n\tca local {\n\t\troot {\n\t\t\tcert %s\n\t\t\tkey %s\n\t\t}\n\t}\n}\n",
		caddyfileToken(certPath), caddyfileToken(keyPath))
}

// caddyfileToken quotes a path in backticks, inside which the Caddyfile
// lexer takes everything literally, when it would otherwise split it or read
// part of it as a comment or an escape. WriteKustomCA refuses paths that no
// quoting can carry (a backtick, a newline, a brace).
func caddyfileToken(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\#") {
		return s
	}
	return "`" + s + "`"
}

// WriteKustomCA makes the constrained root for CAHosts(extra), writes it to
// dir (created 0700 when missing) as root.crt (0644) and root.key (0600), and
// prints the Caddyfile lines and trust instructions to w. Existing files are
// kept unless force is set: overwriting a root that apps already trust would
// break them all at once.
func WriteKustomCA(w io.Writer, dir string, extra []string, force bool, now time.Time) error {
	if dir == "" {
		return errors.New("--out is required: the directory to write root.crt and root.key to")
	}
	hosts, err := CAHosts(extra)
	if err != nil {
		return err
	}
	abs, err := kustomCADir(dir)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(abs, KustomCACertFile), filepath.Join(abs, KustomCAKeyFile)
	if !force {
		if err := refuseExisting(certPath, keyPath); err != nil {
			return err
		}
	}
	certPEM, keyPEM, err := NewConstrainedRoot(hosts, now)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	// The key first: a root.crt without its key would be useless to Caddy,
	// while a key without root.crt is simply made again with --force.
	if err := writeNewFile(keyPath, keyPEM, 0o600, force); err != nil {
		return err
	}
	if err := writeNewFile(certPath, certPEM, 0o644, force); err != nil {
		return err
	}
	printKustomCAInstructions(w, certPath, keyPath, hosts)
	return nil
}

// kustomCADir is dir made absolute, as the Caddyfile must name it, refused
// when no Caddyfile token can carry it.
func kustomCADir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(abs, "`\r\n{}") {
		return "", fmt.Errorf("--out %q: choose a directory whose path has no backtick, newline or brace, so that the Caddyfile can name it", dir)
	}
	return abs, nil
}

// refuseExisting fails if any of paths exists (or cannot be checked), before
// anything is made: a root that apps may already trust is not replaced
// without --force.
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists: not overwriting a root that apps may already trust (use --force to replace it)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// printKustomCAInstructions tells the operator what was written, what the
// root may sign for, the Caddyfile lines that use it and what to do next.
func printKustomCAInstructions(w io.Writer, certPath, keyPath string, hosts []string) {
	fmt.Fprintf(w, "Wrote %s (root certificate) and %s (its private key, mode 0600).\n", certPath, keyPath)
	fmt.Fprintf(w, "The root can sign only for these hosts (and their subdomains), and for no IP address:\n")
	for _, h := range hosts {
		fmt.Fprintf(w, "  %s\n", h)
	}
	fmt.Fprintf(w, "\nAdd this to the global options block (the { … } at the top) of the Caddyfile:\n\n")
	fmt.Fprint(w, KustomCAPKIOption(certPath, keyPath))
	fmt.Fprintf(w, `
Sites with 'tls internal' and the kustom handler's intercept_connect then get
their certificates from this root, through an intermediate Caddy makes and
renews. Apps must trust %s (and no longer Caddy's own
generated root). Keep %s secret: it can sign for the hosts above.
If this Caddy already ran with its own local CA, remove pki/authorities/local
and certificates/local from Caddy's storage (by default
~/.local/share/caddy) before restarting it: Caddy would otherwise keep
serving the intermediate and certificates the old root signed, which apps
trusting only this root reject; and the old, unlimited root key goes with them.
`, certPath, keyPath)
}

// writeNewFile writes data to path with perm. Without force it fails if path
// exists (O_EXCL, so no race can clobber a file either); with force it writes
// a temporary file beside path and renames it over, so that a reader never
// sees half a key and the mode is perm whatever the old file had.
func writeNewFile(path string, data []byte, perm os.FileMode, force bool) error {
	if !force {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s exists: not overwriting it (use --force to replace it)", path)
			}
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func cmdKustomCA(fl caddycmd.Flags) (int, error) {
	hosts, err := fl.GetStringArray("host")
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if err := WriteKustomCA(os.Stdout, fl.String("out"), hosts, fl.Bool("force"), time.Now()); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	return caddy.ExitCodeSuccess, nil
}

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "kustom-ca",
		Usage: "--out <dir> [--host <name>]... [--force]",
		Short: "Makes a root CA limited to the Klarna and Kustom API hosts, for tls internal",
		Long: `
Writes a root certificate (<dir>/root.crt) and its private key
(<dir>/root.key, mode 0600; <dir> is created with mode 0700) for Caddy's
internal CA, and prints the Caddyfile 'pki' global option that makes
'tls internal' and intercept_connect issue from it.

Apps in the DNS-override and HTTPS_PROXY setups must trust the shim's root.
Caddy's generated root can sign for any name; this one carries critical
X.509 name constraints that permit only the API hosts the shim serves:

  api.klarna.com, api-na.klarna.com, api-oc.klarna.com,
  api.playground.klarna.com, api-na.playground.klarna.com,
  api-oc.playground.klarna.com, api.kustom.co, api.playground.kustom.co

plus each --host (repeatable; a bare host name: no IP address, no
wildcard), and exclude every IP address (0.0.0.0/0, ::/0).
A certificate for any other name or for an IP, even one signed through this
root, is rejected by TLS clients that trust it (the constraints are marked
critical: a client that cannot enforce them must refuse the root itself).
Add a --host for each host a 'map' line names (from or to) that is not above.

Note: an X.509 DNS name constraint also permits subdomains of the name:
"api.klarna.com" permits x.api.klarna.com too (but not pay.klarna.com).

Existing files are not overwritten unless --force is given: apps that trust
the old root would stop trusting the shim.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("out", "", "Directory to write root.crt and root.key to (required)")
			cmd.Flags().StringArray("host", nil, "One more host name to permit (repeatable)")
			cmd.Flags().Bool("force", false, "Replace an existing root.crt and root.key")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdKustomCA)
		},
	})
}
