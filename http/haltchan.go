package http

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/store"
)

// A replica's commits under one HALT lock follow each other, each waiting
// for the primary's answer, so each costs a round trip; an HTTP request
// apiece adds to it the parsing of a request and an answer and, in Go's
// client, two goroutine hand-offs. So the commits of a lock travel over a
// channel of their own: one connection, upgraded from
//
//	POST /halt/commits?name=&epoch=   (Connection: Upgrade, Upgrade: litefs-halt-commits,
//	                                   the lock ID in Litefs-Halt-Id)
//
// which the primary answers 101 once it has checked the lock, and which
// then carries, one at a time, a request and its answer:
//
//	request: kind (1 byte: 'C' commit, 'S' sync), sync (1 byte: 1 when the
//	    commit must be durable), n (8 bytes), then for a commit n bytes of
//	    LTX, for a sync nothing: n is the TXID to make durable
//	answer:  status (2 bytes, an HTTP status code), length (4 bytes), then
//	    that many bytes: nothing on success, the error otherwise
//
// Numbers are big-endian. Everything POST /halt/commit checks before it
// reads a body is checked before a commit's body is read; a refusal then
// ends the channel, whose unread bytes cannot be skipped. The primary ends
// the channel when the grant ends; the replica when it gives the lock up.
// A primary that does not know the endpoint (an earlier version) is sent
// each commit as POST /halt/commit.

// haltChannelProtocol is the Upgrade token of a HALT commit channel.
const haltChannelProtocol = "litefs-halt-commits"

// Kinds of request on a HALT commit channel.
const (
	haltChanCommit = 'C'
	haltChanSync   = 'S'
)

const (
	haltChanRequestSize = 10
	haltChanAnswerSize  = 6
	// maxHaltChanMessage bounds an error message on the channel.
	maxHaltChanMessage = 64 << 10
)

// handleHaltCommits serves a HALT commit channel.
func (s *Server) handleHaltCommits(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("name")
	epoch, eerr := strconv.ParseUint(q.Get("epoch"), 10, 64)
	if name == "" || eerr != nil {
		writeError(w, http.StatusBadRequest, "invalid halt commit channel: want ?name=DB&epoch=N and the lock ID in %s", HaltIDHeader)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), haltChannelProtocol) {
		writeError(w, http.StatusBadRequest, "invalid halt commit channel: want Upgrade: %s", haltChannelProtocol)
		return
	}
	id, err := store.ParseHaltID(r.Header.Get(HaltIDHeader))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid halt commit channel: %s: %v", HaltIDHeader, err)
		return
	}
	term := s.currentTerm(w)
	if term == nil {
		return
	}
	done, err := term.HaltDone(epoch, name, id)
	if err != nil {
		writeError(w, termStatus(err), "%v", err)
		return
	}
	s.channels.Add(1)
	defer s.channels.Done()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 cannot switch protocols: the replica sends each commit
		// as a request of its own.
		writeError(w, http.StatusHTTPVersionNotSupported, "halt commit channel: %v", err)
		return
	}
	defer conn.Close()
	// The deadlines the API set for the request are the channel's to set
	// now.
	conn.SetDeadline(time.Time{})
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\nLitefs-Id: %016X\r\n\r\n", haltChannelProtocol, s.store.NodeID())
	if brw.Flush() != nil {
		return
	}
	// The channel ends with the grant, and with the server.
	ended := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-done:
		case <-r.Context().Done():
		case <-ended:
		}
		conn.Close()
	}()
	defer wg.Wait()
	defer close(ended)
	ch := haltChannel{s: s, term: term, conn: conn, br: brw.Reader, bw: brw.Writer, name: name, epoch: epoch, id: id}
	for ch.serveOne(r.Context()) {
	}
}

// haltChannel is the primary's end of a HALT commit channel.
type haltChannel struct {
	s     *Server
	term  *store.Term
	conn  net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	name  string
	epoch uint64
	id    store.HaltID
}

// serveOne reads one request, carries it out and answers it; it reports
// whether the channel goes on.
func (ch *haltChannel) serveOne(ctx context.Context) bool {
	var req [haltChanRequestSize]byte
	if _, err := io.ReadFull(ch.br, req[:]); err != nil {
		return false
	}
	kind, durable, n := req[0], req[1] == 1, binary.BigEndian.Uint64(req[2:])
	switch kind {
	case haltChanSync:
		err := ch.term.SyncHalted(ctx, ch.epoch, ch.name, ch.id, ltx.TXID(n))
		return ch.answer(err, true)
	case haltChanCommit:
	default:
		ch.answer(fmt.Errorf("%w: unknown request %q on the halt commit channel", errBadChannelRequest, kind), false)
		return false
	}
	size := int64(n)
	if n > 1<<62 {
		size = 1 << 62
	}
	if err := ch.term.CheckHaltCommit(ch.epoch, ch.name, ch.id, size); err != nil {
		// The body stays unread: the channel cannot go on.
		ch.answer(err, false)
		return false
	}
	// The body arrives as fast as a request body must.
	opts := ch.s.opts
	ch.conn.SetReadDeadline(time.Now().Add(opts.BodyReadTimeout + time.Duration(float64(size)/float64(opts.MinBodyRate)*float64(time.Second))))
	sp := &spool{dir: ch.s.store.Dir()}
	defer sp.Close()
	_, err := io.CopyN(sp, ch.br, size)
	ch.conn.SetReadDeadline(time.Time{})
	if err != nil {
		return false
	}
	_, err = ch.term.CommitHalted(ctx, ch.epoch, ch.name, ch.id, sp, sp.size, durable)
	return ch.answer(err, true)
}

// errBadChannelRequest is a request the channel does not know.
var errBadChannelRequest = errors.New("invalid request")

// answer writes the answer to a request, and reports whether the channel
// goes on: it does if more may follow and the answer was written.
func (ch *haltChannel) answer(err error, more bool) bool {
	code, msg := http.StatusOK, ""
	if err != nil {
		code, msg = termStatus(err), err.Error()
		if errors.Is(err, errBadChannelRequest) {
			code = http.StatusBadRequest
		}
		if len(msg) > maxHaltChanMessage {
			msg = msg[:maxHaltChanMessage]
		}
	}
	var a [haltChanAnswerSize]byte
	binary.BigEndian.PutUint16(a[0:], uint16(code))
	binary.BigEndian.PutUint32(a[2:], uint32(len(msg)))
	ch.conn.SetWriteDeadline(time.Now().Add(ch.s.opts.WriteTimeout))
	defer ch.conn.SetWriteDeadline(time.Time{})
	ch.bw.Write(a[:])
	ch.bw.WriteString(msg)
	return ch.bw.Flush() == nil && more
}

// haltChanClient is the replica's end of a HALT commit channel.
type haltChanClient struct {
	rwc    io.ReadWriteCloser
	br     *bufio.Reader
	cancel context.CancelFunc // ends the request the channel came from
	buf    []byte
}

// errNoChannel says that the primary serves no commit channel: commits go
// as requests of their own.
var errNoChannel = errors.New("the primary serves no HALT commit channel")

// openHaltChannel opens a commit channel for the lock ref on the primary
// at base. The channel lives until it is closed, whatever ctx does after
// it is open.
func (c *HaltClient) openHaltChannel(ctx context.Context, base string, ref HaltRef) (*haltChanClient, error) {
	q := url.Values{"name": {ref.Name}, "epoch": {strconv.FormatUint(ref.Epoch, 10)}}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, base+"/halt/commits?"+q.Encode(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", haltChannelProtocol)
	req.Header.Set("Content-Type", "application/octet-stream") // what the channel carries
	req.Header.Set(HaltIDHeader, ref.ID.String())
	resp, err := c.client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		cancel()
		switch resp.StatusCode {
		case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusHTTPVersionNotSupported:
			return nil, errNoChannel
		}
		return nil, CheckResponse(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		cancel()
		return nil, errNoChannel
	}
	return &haltChanClient{rwc: rwc, br: bufio.NewReader(rwc), cancel: cancel}, nil
}

// do sends one request and reads its answer; an error that is not a
// *StatusError leaves the channel unusable. ctx bounds the exchange.
func (ch *haltChanClient) do(ctx context.Context, kind byte, durable bool, n uint64, body []byte) error {
	stop := context.AfterFunc(ctx, func() { ch.rwc.Close() })
	defer stop()
	if err := ch.write(kind, durable, n, body); err != nil {
		return ch.ioErr(ctx, err)
	}
	return ch.read(ctx)
}

// write sends a request.
func (ch *haltChanClient) write(kind byte, durable bool, n uint64, body []byte) error {
	// One write for the request and a small body.
	ch.buf = append(ch.buf[:0], kind, 0)
	if durable {
		ch.buf[1] = 1
	}
	ch.buf = binary.BigEndian.AppendUint64(ch.buf, n)
	if len(body) <= 64<<10 {
		ch.buf = append(ch.buf, body...)
		body = nil
	}
	if _, err := ch.rwc.Write(ch.buf); err != nil {
		return err
	}
	if len(body) > 0 {
		if _, err := ch.rwc.Write(body); err != nil {
			return err
		}
	}
	return nil
}

// read reads the answer to the request sent, within ctx.
func (ch *haltChanClient) read(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { ch.rwc.Close() })
	defer stop()
	var a [haltChanAnswerSize]byte
	if _, err := io.ReadFull(ch.br, a[:]); err != nil {
		return ch.ioErr(ctx, err)
	}
	code, size := int(binary.BigEndian.Uint16(a[0:])), binary.BigEndian.Uint32(a[2:])
	if size > maxHaltChanMessage {
		return ch.ioErr(ctx, fmt.Errorf("an answer of %d bytes on the halt commit channel", size))
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(ch.br, msg); err != nil {
		return ch.ioErr(ctx, err)
	}
	if code == http.StatusOK {
		return nil
	}
	return &StatusError{Code: code, Message: string(msg)}
}

func (ch *haltChanClient) ioErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("halt commit channel: %w", context.Cause(ctx))
	}
	return fmt.Errorf("halt commit channel: %w", err)
}

// close ends the channel.
func (ch *haltChanClient) close() {
	ch.rwc.Close()
	ch.cancel()
}
