import jax


def test_tests_see_eight_simulated_cpu_devices():
  assert jax.device_count() == 8 and jax.devices()[0].platform == "cpu"
