pytest_plugins = ["tests.support.zabbix_fixtures", "tests.support.elm_fixtures"]
