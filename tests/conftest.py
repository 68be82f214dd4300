pytest_plugins = ["tests.zabbix_fixtures"]
