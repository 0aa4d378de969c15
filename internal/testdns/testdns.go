// Package testdns is a tiny DNS server on loopback for tests of the DNS
// override setup: it answers A queries for the names it is given with
// 127.0.0.1 and NXDOMAIN for everything else, as an internal DNS zone or a
// hosts file pointing the Klarna hosts at the shim would.
package testdns

import (
	"context"
	"net"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Server answers for names (without trailing dots).
type Server struct {
	Addr  string
	names map[string]bool
}

// Start serves until the test ends.
func Start(t testing.TB, names ...string) *Server {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &Server{Addr: pc.LocalAddr().String(), names: map[string]bool{}}
	for _, n := range names {
		s.names[strings.ToLower(n)+"."] = true
	}
	go s.serve(pc)
	return s
}

func (s *Server) serve(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		hdr, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		resp := dnsmessage.Builder{}
		rh := dnsmessage.Header{ID: hdr.ID, Response: true, Authoritative: true}
		known := s.names[strings.ToLower(q.Name.String())]
		if !known {
			rh.RCode = dnsmessage.RCodeNameError
		}
		b := dnsmessage.NewBuilder(nil, rh)
		resp = b
		_ = resp.StartQuestions()
		_ = resp.Question(q)
		_ = resp.StartAnswers()
		if known && q.Type == dnsmessage.TypeA {
			_ = resp.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
				dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}})
		}
		out, err := resp.Finish()
		if err == nil {
			_, _ = pc.WriteTo(out, from)
		}
	}
}

// Resolver resolves through this server only.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", s.Addr)
		},
	}
}
