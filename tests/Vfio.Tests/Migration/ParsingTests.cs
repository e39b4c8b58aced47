using System.Net;
using Vfio.Cli;

namespace Vfio.Tests.Migration;

public class ParsingTests
{
    [Theory]
    [InlineData("4096", 4096)]
    [InlineData("64KiB", 64 << 10)]
    [InlineData("64MiB", 64 << 20)]
    [InlineData("64M", 64 << 20)]
    [InlineData("1GiB", 1L << 30)]
    [InlineData("1.5GiB", 3L << 29)]
    [InlineData("64MB", 64_000_000)]
    [InlineData(" 2 kib ", 2048)]
    public void Sizes_with_units(string text, long bytes) => Assert.Equal(bytes, Sizes.Parse(text, "--x"));

    [Fact]
    public void Rates_may_end_in_per_second() => Assert.Equal(320L << 20, Sizes.Parse("320MiB/s", "--r", rate: true));

    [Theory]
    [InlineData("")]
    [InlineData("MiB")]
    [InlineData("12XB")]
    [InlineData("-5")]
    [InlineData("1e9")]
    public void Bad_sizes_are_usage_errors(string text) =>
        Assert.Throws<MigrationCommands.UsageException>(() => Sizes.Parse(text, "--x"));

    [Fact]
    public void Endpoints()
    {
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 5000), Vfio.Cli.Endpoints.Parse("127.0.0.1:5000", "--to", resolve: true));
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 5000), Vfio.Cli.Endpoints.Parse("[::1]:5000", "--to", resolve: true));
        Assert.Equal(5000, Vfio.Cli.Endpoints.Parse("localhost:5000", "--to", resolve: true).Port);
        Assert.Equal(new IPEndPoint(IPAddress.Any, 7000), Vfio.Cli.Endpoints.Parse("*:7000", "--listen", resolve: false));
        Assert.Throws<MigrationCommands.UsageException>(() => Vfio.Cli.Endpoints.Parse("127.0.0.1", "--to", resolve: true));
        Assert.Throws<MigrationCommands.UsageException>(() => Vfio.Cli.Endpoints.Parse("127.0.0.1:", "--to", resolve: true));
        Assert.Throws<MigrationCommands.UsageException>(() => Vfio.Cli.Endpoints.Parse("host:http", "--to", resolve: true));
    }
}
