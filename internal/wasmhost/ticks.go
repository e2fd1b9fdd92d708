package wasmhost

import (
	"context"
	"fmt"
	"time"
)

// setTick is called from proxy_set_tick_period_milliseconds.
func (in *instance) setTick(period time.Duration) {
	in.tickPeriod = period
	in.tickNanos.Store(int64(period))
	if period > 0 {
		in.nextTick = time.Now().Add(period)
	}
	select {
	case in.p.tickWake <- struct{}{}:
	default:
	}
}

// tickLoop calls proxy_on_tick on every instance whose period has elapsed. An instance busy
// with a stream is ticked when it is free again, as a busy Envoy worker would.
func (p *Plugin) tickLoop() {
	defer close(p.tickDone)
	defer func() {
		// call() already turns guest failures into errors; anything else is a host bug that
		// must stop the ticks, not the process.
		if r := recover(); r != nil {
			p.log.Error("tick loop stopped by a panic", "panic", fmt.Sprint(r))
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := time.Time{}
		p.mu.Lock()
		insts := append([]*instance(nil), p.insts...)
		p.mu.Unlock()
		for _, in := range insts {
			if in.tickNanos.Load() == 0 {
				continue
			}
			if !in.mu.TryLock() {
				if next.IsZero() || time.Now().Add(5*time.Millisecond).Before(next) {
					next = time.Now().Add(5 * time.Millisecond)
				}
				continue
			}
			if in.tickPeriod > 0 && in.err() == nil {
				if !time.Now().Before(in.nextTick) {
					in.active, in.cur = in.root, nil
					if _, err := in.call(context.Background(), p.cfg.CallTimeout, "proxy_on_tick", uint64(in.root)); err != nil {
						p.log.Error("proxy_on_tick failed", "err", err)
					}
					in.nextTick = time.Now().Add(in.tickPeriod)
				}
				if next.IsZero() || in.nextTick.Before(next) {
					next = in.nextTick
				}
			}
			in.mu.Unlock()
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-p.closing:
			return
		case <-p.tickWake:
		case <-timer.C:
		}
	}
}
