"""Built-in data mappings (package data): ``taobao.yaml`` (events), ``aliccp.yaml`` (table).

Load them with :func:`dhen_cvr.data.prepare.load_preset`.
"""
