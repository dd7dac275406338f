-- One status change as the write path issues it (orders/writes.py, as SQLAlchemy logs it):
-- lock the order, update it, append the event, allocate a seq on both of its streams and index
-- them in one statement, commit; then the publisher's published_at mark. chr(58) is a colon,
-- which pgbench would read as a variable.
\set n random(1, 10000)
\set store :n % :stores
BEGIN;
SELECT id, status, version FROM orders WHERE id = 'o' || :n FOR UPDATE;
UPDATE orders SET status = 'READY', updated_at = now(), version = version + 1 WHERE id = 'o' || :n;
INSERT INTO events (order_id, kind, from_status, to_status, source, actor, data, created_at)
  VALUES ('o' || :n, 'order.status', 'PREPARING', 'READY', 'pos', 'pos-1',
          json_build_object('order', repeat('x', 600)),
          now())
  RETURNING id AS event_id \gset
WITH s AS (
  INSERT INTO streams (name, head_seq, epoch, pruned_seq)
  VALUES ('customer' || chr(58) || 'c' || :n, 1, 'e', 0), ('store' || chr(58) || 's' || :store, 1, 'e', 0)
  ON CONFLICT (name) DO UPDATE SET head_seq = streams.head_seq + 1 RETURNING name, head_seq
) INSERT INTO stream_events (stream, seq, event_id) SELECT name, head_seq, :event_id::bigint FROM s;
COMMIT;
UPDATE events SET published_at = now() WHERE id = :event_id AND published_at IS NULL;
