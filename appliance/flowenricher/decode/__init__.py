"""Flow decoders: NetFlow v5, NetFlow v9, IPFIX and sFlow v5, each turning many datagrams
into one :class:`~appliance.flowenricher.batch.FlowBatch`."""
