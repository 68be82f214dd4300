"""trapline: data from places Zabbix cannot reach, into Zabbix and Prometheus.

The code lives in the top-level folders ``collectors/``, ``middleware/`` and
``exporters/`` (the layout of the design card); ``trapline/`` links them into one
importable package so nothing else in site-packages is shadowed.
"""

__version__ = "0.1.0"
