// Command legacyclient calls an API the way a legacy PHP integration does:
// one call after another, each on a new connection with a full TLS handshake
// (PHP's curl handle per request, no keep-alive, no session resumption). It
// prints the latency per call, median and p99, as key=value pairs.
//
//	legacyclient -url https://127.0.0.1:9445/checkout/v3/orders/o1 -ca ca.pem \
//	             -host api.klarna.com -user K123_abc -pass secret -n 200
//
// With -n 1 -discard it is also a download client for the streaming case:
// it reads the body to the end and reports the bytes and the rate.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	target := flag.String("url", "", "URL to call (http or https)")
	caFile := flag.String("ca", "", "PEM file of the CA to trust for https")
	host := flag.String("host", "", "Host header and TLS server name to send instead of the URL's host (the dial address stays the URL's)")
	user := flag.String("user", "", "Basic auth username")
	pass := flag.String("pass", "", "Basic auth password")
	auth := flag.String("auth", "", "a literal Authorization header (instead of -user/-pass)")
	method := flag.String("method", "GET", "HTTP method")
	body := flag.String("body", "", "request body")
	n := flag.Int("n", 100, "calls to time")
	warmup := flag.Int("warmup", 5, "calls made first and not timed")
	expect := flag.Int("expect", 0, "status every call must get (0: any 2xx)")
	keepAlive := flag.Bool("keepalive", false, "reuse one connection (for comparison; a legacy client does not)")
	discard := flag.Bool("discard", false, "report bytes and MB/s of the body (streaming case)")
	timeout := flag.Duration("timeout", 5*time.Minute, "timeout per call")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("legacyclient: ")
	if *target == "" {
		log.Fatal("-url is required")
	}
	u, err := url.Parse(*target)
	if err != nil {
		log.Fatal(err)
	}
	tlsConf := &tls.Config{}
	if *caFile != "" {
		pemBytes, err := os.ReadFile(*caFile)
		if err != nil {
			log.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			log.Fatalf("%s: no certificate", *caFile)
		}
		tlsConf.RootCAs = pool
	}
	if *host != "" {
		tlsConf.ServerName = hostOnly(*host)
	}
	// A legacy client: PHP curl speaks HTTP/1.1 unless told otherwise.
	newTransport := func() *http.Transport {
		return &http.Transport{
			Proxy:              nil,
			TLSClientConfig:    tlsConf.Clone(), // a fresh config: no session cache, full handshake
			DisableKeepAlives:  !*keepAlive,
			DisableCompression: true,
			DialContext:        (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		}
	}
	shared := newTransport()

	call := func() (time.Duration, int64, error) {
		var rd io.Reader
		if *body != "" {
			rd = strings.NewReader(*body)
		}
		req, err := http.NewRequestWithContext(context.Background(), *method, u.String(), rd)
		if err != nil {
			return 0, 0, err
		}
		if *host != "" {
			req.Host = *host
		}
		switch {
		case *auth != "":
			req.Header.Set("Authorization", *auth)
		case *user != "" || *pass != "":
			req.SetBasicAuth(*user, *pass)
		}
		if *body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		tr := shared
		if !*keepAlive {
			tr = newTransport()
		}
		c := &http.Client{Transport: tr, Timeout: *timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, 0, err
		}
		nb, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if !*keepAlive {
			tr.CloseIdleConnections()
		}
		if err != nil {
			return 0, nb, err
		}
		ok := resp.StatusCode >= 200 && resp.StatusCode < 300
		if *expect != 0 {
			ok = resp.StatusCode == *expect
		}
		if !ok {
			return d, nb, fmt.Errorf("status %d (%s)", resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"))
		}
		return d, nb, nil
	}

	for i := 0; i < *warmup; i++ {
		if _, _, err := call(); err != nil {
			log.Fatalf("warm-up call: %v", err)
		}
	}
	times := make([]time.Duration, 0, *n)
	var bytes int64
	start := time.Now()
	for i := 0; i < *n; i++ {
		d, nb, err := call()
		if err != nil {
			log.Fatalf("call %d: %v", i+1, err)
		}
		times = append(times, d)
		bytes += nb
	}
	wall := time.Since(start)
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
	var sum time.Duration
	for _, d := range times {
		sum += d
	}
	fmt.Printf("n=%d p50_ms=%s p99_ms=%s min_ms=%s max_ms=%s mean_ms=%s",
		len(times), ms(pct(times, 50)), ms(pct(times, 99)), ms(times[0]), ms(times[len(times)-1]), ms(sum/time.Duration(len(times))))
	if *discard {
		fmt.Printf(" bytes=%d seconds=%.3f mib_per_s=%.1f", bytes, wall.Seconds(), float64(bytes)/(1<<20)/wall.Seconds())
	}
	fmt.Println()
}

// pct is the nearest-rank percentile of sorted.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
