// Command kubeletstream is the node emulator's kubelet endpoint: the part of the kubelet's
// HTTPS server that the kube-apiserver proxies pods/portforward and pods/log to.
//
//	kubeletstream --listen=127.0.0.1:PORT --tls-cert-file=F --tls-private-key-file=F \
//	    --client-ca-file=CA --pods-dir=STATE_DIR/pods
//
// Routes, as the kubelet serves them (pkg/kubelet/server/server.go):
//
//	/portForward/{namespace}/{pod}[/{uid}]         SPDY or WebSocket, the kubelet's own
//	                                               k8s.io/kubelet/pkg/cri/streaming/portforward
//	/containerLogs/{namespace}/{pod}/{container}   follow, tailLines, limitBytes
//	/healthz                                       no client certificate needed
//
// Emulated pods are host processes sharing the host's network, so forwarding a pod's port
// dials 127.0.0.1:<port>. Logs come from the files the emulator writes:
// <pods-dir>/<namespace>_<pod>_<uid>/<container>.log, one per container, appended across
// restarts (so `previous` is refused and `timestamps` adds nothing: no line carries a time).
//
// Authentication: the two streaming routes need a client certificate signed by
// --client-ca-file (the API server's --kubelet-client-certificate). A real kubelet also
// authorizes the caller with a SubjectAccessReview against nodes/proxy; this one does not:
// it listens on loopback only, and the API server has already applied RBAC to
// pods/portforward and pods/log before it proxies.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
)

const (
	// As the kubelet: --streaming-connection-idle-timeout's default, and
	// remotecommand's DefaultStreamCreationTimeout.
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
	followPoll            = 100 * time.Millisecond
)

type server struct {
	podsDir string
}

// forwarder dials the pod's port on loopback: emulated pods share the host's network.
type forwarder struct{}

func (forwarder) PortForward(ctx context.Context, pod string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(conn, stream)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(stream, conn)
		done <- struct{}{}
	}()
	// The stream is finished once the pod's side closed: the client's side may stay open.
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// podDir finds <namespace>_<pod>_<uid>; a name reused by a newer pod leaves older
// directories behind, so the newest one wins. Names hold no '_' (DNS-1123).
func (s *server) podDir(namespace, pod string) (string, error) {
	if strings.ContainsAny(namespace+pod, "_/*?[\\") || namespace == "" || pod == "" {
		return "", fmt.Errorf("invalid pod %s/%s", namespace, pod)
	}
	matches, _ := filepath.Glob(filepath.Join(s.podsDir, namespace+"_"+pod+"_*"))
	best, bestTime := "", time.Time{}
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && fi.IsDir() && fi.ModTime().After(bestTime) {
			best, bestTime = m, fi.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("pod %s/%s has not run on this node", namespace, pod)
	}
	return best, nil
}

func authenticated(w http.ResponseWriter, r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "Unauthorized: a client certificate signed by the cluster CA is required", http.StatusUnauthorized)
		return false
	}
	return true
}

func (s *server) portForward(w http.ResponseWriter, r *http.Request) {
	if !authenticated(w, r) {
		return
	}
	if _, err := s.podDir(r.PathValue("namespace"), r.PathValue("pod")); err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	log.Printf("portForward %s/%s from %s", r.PathValue("namespace"), r.PathValue("pod"), r.TLS.PeerCertificates[0].Subject.CommonName)
	portforward.ServePortForward(w, r, forwarder{}, r.PathValue("pod"), types.UID(r.PathValue("uid")),
		opts, idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// alive: the container's process (its pid file: "<pid> <start ticks>") still runs.
func alive(pidFile string) bool {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data))
	if len(fields) < 1 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + fields[0] + "/stat")
	if err != nil {
		return false
	}
	rest := string(stat)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest) // f[0] is the state, f[19] the start time
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return false
	}
	return len(fields) < 2 || f[19] == fields[1]
}

// tailOffset: where the last n lines of f start.
func tailOffset(f *os.File, size int64, n int64) (int64, error) {
	const chunk = 64 * 1024
	pos, seen := size, int64(0)
	buf := make([]byte, chunk)
	// A trailing newline ends the last line; it does not start another.
	if size > 0 {
		one := make([]byte, 1)
		if _, err := f.ReadAt(one, size-1); err == nil && one[0] == '\n' {
			pos--
		}
	}
	for pos > 0 {
		start := max(pos-chunk, 0)
		b := buf[:pos-start]
		if _, err := f.ReadAt(b, start); err != nil {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] == '\n' {
				seen++
				if seen == n {
					return start + int64(i) + 1, nil
				}
			}
		}
		pos = start
	}
	return 0, nil
}

func (s *server) containerLogs(w http.ResponseWriter, r *http.Request) {
	if !authenticated(w, r) {
		return
	}
	q := r.URL.Query()
	if q.Get("previous") == "true" {
		http.Error(w, "previous terminated container not found: the node emulator keeps one log per container, appended across restarts", http.StatusBadRequest)
		return
	}
	// Not started yet: 400, as the kubelet answers for a container that is waiting to start.
	dir, err := s.podDir(r.PathValue("namespace"), r.PathValue("pod"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	container := r.PathValue("container")
	if container == "" || strings.ContainsAny(container, "/\\") || container == "." || container == ".." {
		http.Error(w, "invalid container name", http.StatusBadRequest)
		return
	}
	f, err := os.Open(filepath.Join(dir, container+".log"))
	if err != nil {
		http.Error(w, fmt.Sprintf("container %q in pod %s/%s is waiting to start (no log yet)", container, r.PathValue("namespace"), r.PathValue("pod")), http.StatusBadRequest)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var offset int64
	if v := q.Get("tailLines"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "invalid tailLines", http.StatusBadRequest)
			return
		}
		if n == 0 {
			offset = fi.Size()
		} else if offset, err = tailOffset(f, fi.Size(), n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	limit := int64(-1)
	if v := q.Get("limitBytes"); v != "" {
		if limit, err = strconv.ParseInt(v, 10, 64); err != nil || limit <= 0 {
			http.Error(w, "invalid limitBytes", http.StatusBadRequest)
			return
		}
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	out := io.Writer(w)
	var lw *limitedWriter
	if limit > 0 {
		lw = &limitedWriter{w: w, left: limit}
		out = lw
	}
	if q.Get("follow") != "true" {
		_, _ = io.Copy(out, f)
		return
	}
	// Follow until the container's process ends (then drain what it wrote last) or the
	// client goes away, as the kubelet follows a running container.
	pidFile := filepath.Join(dir, container, "pid")
	flusher, _ := w.(http.Flusher)
	reader := bufio.NewReaderSize(f, 32*1024)
	for {
		running := alive(pidFile)
		n, err := io.Copy(out, reader)
		if n > 0 && flusher != nil {
			flusher.Flush()
		}
		if err != nil || (lw != nil && lw.left <= 0) || !running {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(followPoll):
		}
	}
}

type limitedWriter struct {
	w    io.Writer
	left int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errors.New("limitBytes reached")
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

func main() {
	listen := flag.String("listen", "127.0.0.1:10250", "address to serve HTTPS on (loopback)")
	certFile := flag.String("tls-cert-file", "", "serving certificate")
	keyFile := flag.String("tls-private-key-file", "", "serving key")
	clientCA := flag.String("client-ca-file", "", "CA that signs the API server's kubelet client certificate")
	podsDir := flag.String("pods-dir", "", "the node emulator's pod directories (STATE_DIR/pods)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.LUTC | log.Lmicroseconds)
	if *certFile == "" || *keyFile == "" || *clientCA == "" || *podsDir == "" {
		log.Fatal("--tls-cert-file, --tls-private-key-file, --client-ca-file and --pods-dir are required")
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("--listen=%s: only a loopback address is allowed", *listen)
	}
	caPEM, err := os.ReadFile(*clientCA)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatalf("no certificate in %s", *clientCA)
	}
	s := &server{podsDir: *podsDir}
	mux := http.NewServeMux()
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", s.portForward)
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.containerLogs)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{
		Addr:    *listen,
		Handler: mux,
		TLSConfig: &tls.Config{
			ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs:  pool,
			MinVersion: tls.VersionTLS12,
			// SPDY upgrades need HTTP/1.1.
			NextProtos: []string{"http/1.1"},
		},
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
	}()
	log.Printf("serving port-forward and container logs on https://%s for pods under %s", *listen, *podsDir)
	if err := srv.ListenAndServeTLS(*certFile, *keyFile); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
