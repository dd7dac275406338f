-- 10,000 orders of 10,000 customers in 100 stores, for write.sql (bench/pgbench/README in docs/scaling.md).
INSERT INTO orders (id, customer_id, store_id, status, payment_status, payment_method, amount,
                    currency, items, created_at, updated_at, version)
SELECT 'o' || i, 'c' || i, 's' || (i % 100), 'PREPARING', 'CASH', 'cash', 3000, 'INR',
       '[{"sku":"tea","name":"Masala tea","quantity":2,"unit_price":1500}]', now(), now(), 1
FROM generate_series(1, 10000) AS i;
