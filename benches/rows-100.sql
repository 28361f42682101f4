-- A read of 100 consecutive accounts: a result of many small rows, as list pages and reports
-- fetch (pgbench -S returns one row).
\set a random(1, 100000 * :scale - 99)
SELECT aid, abalance FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 99;
