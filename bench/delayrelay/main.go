// Command delayrelay is a userspace TCP relay that stands in for a WAN link
// on loopback, where there is no netem: every chunk of bytes is held for a
// fixed delay in each direction before it is passed on.
//
//	delayrelay -listen 127.0.0.1:9444 -to 127.0.0.1:9443 -delay 20ms
//
// Each direction is a delay line: a reader stamps every chunk with the time
// it arrived and queues it; a writer releases each chunk at its arrival time
// plus the delay. Release times only grow (one delay, FIFO order), so the
// writer sleeps until an absolute time and delays never add up: a burst of
// chunks arrives delay later as the same burst, as on a long cable.
//
// With -handshake (the default) the relay also charges the TCP handshake a
// real WAN would cost: a new connection's first bytes leave no earlier than
// one round trip (2×delay) after it was accepted, plus the one-way delay,
// just as a client's connect() would block for SYN and SYN-ACK before its
// first byte could leave. The relay's own dial is loopback and costs nothing.
package main

import (
	"errors"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	to := flag.String("to", "", "address to relay to (host:port)")
	delay := flag.Duration("delay", 20*time.Millisecond, "one-way delay added in each direction")
	handshake := flag.Bool("handshake", true, "charge each new connection one round trip (2×delay) for the TCP handshake")
	addrOut := flag.String("addr-out", "", "if set, write the actual listen address here once listening")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("delayrelay: ")
	if *to == "" {
		log.Fatal("-to is required")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
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
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Print(err)
			continue
		}
		accepted := time.Now()
		go relay(c.(*net.TCPConn), *to, *delay, *handshake, accepted)
	}
}

func relay(client *net.TCPConn, to string, delay time.Duration, handshake bool, accepted time.Time) {
	defer client.Close()
	up, err := net.Dial("tcp", to)
	if err != nil {
		log.Printf("dial %s: %v", to, err)
		return
	}
	server := up.(*net.TCPConn)
	defer server.Close()
	_ = client.SetNoDelay(true)
	_ = server.SetNoDelay(true)

	var notBefore time.Time // first bytes out: after the emulated SYN / SYN-ACK
	if handshake {
		notBefore = accepted.Add(2 * delay)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); delayLine(client, server, delay, notBefore) }()
	go func() { defer wg.Done(); delayLine(server, client, delay, time.Time{}) }()
	wg.Wait()
}

type chunk struct {
	buf     *[]byte
	n       int
	release time.Time
	eof     bool // the source half-closed (or failed): pass the close on
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// delayLine copies src to dst, each chunk delay after it was read (and not
// before notBefore+delay). A close of src is passed on as a half-close of dst,
// delayed like data.
func delayLine(src, dst *net.TCPConn, delay time.Duration, notBefore time.Time) {
	// Bounded: a slow dst pushes back on src, as a full window would.
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			bp := bufPool.Get().(*[]byte)
			n, err := src.Read(*bp)
			at := time.Now()
			if at.Before(notBefore) {
				at = notBefore
			}
			if n > 0 {
				q <- chunk{buf: bp, n: n, release: at.Add(delay)}
			} else {
				bufPool.Put(bp)
			}
			if err != nil {
				q <- chunk{eof: true, release: at.Add(delay)}
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if d := time.Until(c.release); d > 0 {
			time.Sleep(d)
		}
		if c.eof {
			if !failed {
				_ = dst.CloseWrite()
			}
			continue
		}
		if !failed {
			if _, err := dst.Write((*c.buf)[:c.n]); err != nil {
				failed = true
				// Stop the other side too: the peer is gone.
				_ = src.SetReadDeadline(time.Now())
				_ = dst.Close()
			}
		}
		bufPool.Put(c.buf)
	}
}
