package wasmhost

import (
	"context"
	"errors"
)

// acquire returns a healthy instance, locked, for a new stream: an idle one if there is one,
// a new one while the pool is not full, otherwise the next one in turn (waiting for it).
func (p *Plugin) acquire(ctx context.Context) (*instance, error) {
	for {
		select {
		case <-p.closing:
			return nil, errors.New("wasmhost: plugin closed")
		default:
		}
		p.mu.Lock()
		live := p.insts[:0]
		for _, in := range p.insts {
			if in.err() == nil {
				live = append(live, in)
			} else {
				go in.mod.Close(context.Background())
			}
		}
		clear(p.insts[len(live):])
		p.insts = live
		for _, in := range p.insts {
			if in.mu.TryLock() {
				if in.err() != nil {
					in.mu.Unlock()
					continue
				}
				p.mu.Unlock()
				return in, nil
			}
		}
		if len(p.insts) < p.cfg.PoolSize {
			in, err := p.newInstance(ctx)
			if err != nil {
				p.mu.Unlock()
				return nil, err
			}
			p.insts = append(p.insts, in)
			in.mu.Lock()
			p.mu.Unlock()
			return in, nil
		}
		p.rr = (p.rr + 1) % len(p.insts)
		in := p.insts[p.rr]
		p.mu.Unlock()
		in.mu.Lock()
		if in.err() == nil {
			return in, nil
		}
		in.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}
