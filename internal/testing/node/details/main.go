// Command details answers like Bookinfo's details service (GET /details/<id>, GET /health),
// small enough to build here as an image for the real node's workloads.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func main() {
	addr := flag.String("addr", ":9080", "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"Details is healthy"}`))
	})
	mux.HandleFunc("GET /details/", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/details/"))
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"please provide numeric product id"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"id": id, "author": "William Shakespeare", "year": 1595, "type": "paperback",
			"pages": 200, "publisher": "PublisherA", "language": "English",
			"ISBN-10": "1234567890", "ISBN-13": "123-1234567890",
		})
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
