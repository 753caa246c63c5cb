-- The node that was the primary when the cluster was built (a switchover moves the primary role;
-- `cluster destroy` switches back to this node first, since only its data is the server's own).
ALTER TABLE clusters ADD COLUMN origin_node_id INTEGER;
