-- The history's index by collector put each new transition's entry on a random page. Keyed first
-- by the transition's bucket of 4,096 positions, a write's entries land in the newest bucket's
-- few pages. A collector's history is read bucket by bucket (ADR 0081).
DROP INDEX transitions_collector;
CREATE INDEX transitions_collector ON transitions ((seq >> 12), collector_id, seq);
