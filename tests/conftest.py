pytest_plugins = ["tests.zabbix_fixtures", "tests.elm_fixtures"]
