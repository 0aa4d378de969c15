// Command upstream is a stand-in for the Kustom API for benchmarks: a TLS
// server (HTTP/1.1 and HTTP/2) with a throw-away CA, answering the Kustom
// endpoints the benchmarks call as fast as it can. Unlike
// internal/testupstream it records nothing.
//
//	upstream -addr 127.0.0.1:9443 -ca-out /tmp/b/ca.pem \
//	         -site-cert-out /tmp/b/site.crt -site-key-out /tmp/b/site.key
//
// Endpoints:
//
//	GET  /checkout/v3/orders/{id}               200, a small order JSON
//	POST /checkout/v3/orders                    201, Location https://api.kustom.co/checkout/v3/orders/{id}
//	GET  /ordermanagement/v1/orders/{id}        200, a small order JSON
//	GET  /settlements/v1/reports/payout?size=N  200, N bytes of CSV generated on the fly
//	anything else                               404 JSON
//
// With -expect-auth and -expect-host, a request with another Authorization
// (401) or Host (421) is refused, so that a benchmark measuring a proxy that
// does not swap credentials or set Host shows up as non-2xx answers instead
// of fast ones. Both are one string compare.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kustomshim/kustomshim/internal/testcerts"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	caOut := flag.String("ca-out", "ca.pem", "where to write the CA certificate (PEM)")
	addrOut := flag.String("addr-out", "", "if set, write the actual listen address here once listening")
	hosts := flag.String("hosts", "api.kustom.co,api.playground.kustom.co,localhost,127.0.0.1", "names (and IPs) the upstream's certificate covers")
	siteCert := flag.String("site-cert-out", "", "if set, also issue a certificate for -site-hosts from the same CA and write it here (PEM), for a proxy's own TLS site")
	siteKey := flag.String("site-key-out", "", "key for -site-cert-out (PEM)")
	siteHosts := flag.String("site-hosts", "api.klarna.com,localhost,127.0.0.1", "names the -site-cert-out certificate covers")
	expectAuth := flag.String("expect-auth", "", "if set, answer 401 to any other Authorization header")
	expectHost := flag.String("expect-host", "", "if set, answer 421 to any other Host header")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("upstream: ")

	ca, err := testcerts.NewCA("kustom-shim bench CA")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*caOut, ca.PEM(), 0o644); err != nil {
		log.Fatal(err)
	}
	leaf, err := ca.Leaf(split(*hosts)...)
	if err != nil {
		log.Fatal(err)
	}
	if *siteCert != "" {
		site, err := ca.Leaf(split(*siteHosts)...)
		if err != nil {
			log.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(site.PrivateKey)
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(*siteCert, pemCert(site.Certificate[0]), 0o644); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(*siteKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			log.Fatal(err)
		}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	h := &handler{expectAuth: *expectAuth, expectHost: *expectHost}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{leaf},
			NextProtos:   []string{"h2", "http/1.1"},
		},
		ErrorLog: log.New(io.Discard, "", 0), // handshake noise from clients that hang up
	}
	if *addrOut != "" {
		if err := os.WriteFile(*addrOut, []byte(ln.Addr().String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.ServeTLS(ln, "", ""); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

type handler struct {
	expectAuth, expectHost string
}

const orderJSON = `{"order_id":"0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4","status":"checkout_incomplete",` +
	`"purchase_country":"SE","purchase_currency":"SEK","locale":"sv-SE","order_amount":10000,"order_tax_amount":2000,` +
	`"order_lines":[{"type":"physical","reference":"19-402","name":"Battery Power Pack","quantity":1,` +
	`"unit_price":10000,"tax_rate":2500,"total_amount":10000,"total_tax_amount":2000}],` +
	`"merchant_urls":{"terms":"https://www.example.com/terms.html","checkout":"https://www.example.com/checkout.html",` +
	`"confirmation":"https://www.example.com/confirmation.html","push":"https://www.example.com/api/push"}}`

var (
	orderBody    = []byte(orderJSON)
	orderLen     = strconv.Itoa(len(orderJSON))
	notFoundBody = []byte(`{"error_code":"NOT_FOUND","error_messages":["not found"],"correlation_id":"bench-upstream"}`)
	unauthBody   = []byte(`{"error_code":"UNAUTHORIZED","error_messages":["bad credentials"],"correlation_id":"bench-upstream"}`)
	wrongHost    = []byte(`{"error_code":"MISDIRECTED","error_messages":["wrong Host"],"correlation_id":"bench-upstream"}`)
)

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr["Content-Type"] = []string{"application/json"}
	hdr["Klarna-Correlation-Id"] = []string{"bench-upstream"}
	if h.expectHost != "" && r.Host != h.expectHost {
		w.WriteHeader(http.StatusMisdirectedRequest)
		_, _ = w.Write(wrongHost)
		return
	}
	if h.expectAuth != "" && r.Header.Get("Authorization") != h.expectAuth {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write(unauthBody)
		return
	}
	p := r.URL.Path
	switch {
	case r.Method == http.MethodPost && p == "/checkout/v3/orders":
		_, _ = io.Copy(io.Discard, r.Body)
		hdr["Location"] = []string{"https://api.kustom.co/checkout/v3/orders/0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4"}
		hdr["Content-Length"] = []string{orderLen}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(orderBody)
	case (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(strings.HasPrefix(p, "/checkout/v3/orders/") || strings.HasPrefix(p, "/ordermanagement/v1/orders/")):
		hdr["Content-Length"] = []string{orderLen}
		_, _ = w.Write(orderBody)
	case r.Method == http.MethodGet && p == "/settlements/v1/reports/payout":
		size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil || size < 0 {
			size = 1 << 20
		}
		streamCSV(w, size)
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write(notFoundBody)
	}
}

// csvBlock is 64 KiB of settlement-report lines, written again and again.
var csvBlock = func() []byte {
	const header = "merchant_id,payment_reference,order_id,type,amount,currency,sale_date,capture_date\n"
	b := make([]byte, 0, 64<<10+256)
	b = append(b, header...)
	for i := 0; len(b) < 64<<10; i++ {
		b = fmt.Appendf(b, "PM0001,pay-%08d,0003a1b2-c3d4-e5f6-%012d,SALE,%d,SEK,2026-11-01,2026-11-02\n", i, i, 1000+i%9000)
	}
	return b[:64<<10]
}()

// streamCSV writes size bytes as they are generated: nothing is held but one
// block, so the upstream's own memory stays flat whatever the size.
func streamCSV(w http.ResponseWriter, size int64) {
	h := w.Header()
	h["Content-Type"] = []string{"text/csv"}
	h["Content-Disposition"] = []string{`attachment; filename="payout-report.csv"`}
	for size > 0 {
		n := int64(len(csvBlock))
		if n > size {
			n = size
		}
		if _, err := w.Write(csvBlock[:n]); err != nil {
			return
		}
		size -= n
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
