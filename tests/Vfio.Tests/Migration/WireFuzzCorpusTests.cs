using Vfio.Fuzz;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// The fuzz corpus (tests/Vfio.Fuzz/corpus/TARGET/), replayed through the decoders without the fuzzer: every input the
/// fuzzer was seeded with or found keeps the decoder contract (a canonical value or a ProtocolException), so a failure
/// found once stays caught. The seeds, made fresh by the current encoders, are accepted or refused as documented.
/// </summary>
public class WireFuzzCorpusTests
{
    /// <summary>Far beyond any decode (microseconds), far below a test run: only a hang crosses it.</summary>
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(30);

    public static TheoryData<string> Targets => new(WireTargets.All.Select(WireTargets.Name));

    private static string CorpusDir(string target) => Path.Combine(RepoPaths.Root(), "tests", "Vfio.Fuzz", "corpus", target);

    [Theory]
    [MemberData(nameof(Targets))]
    public void Every_corpus_input_keeps_the_decoder_contract(string target)
    {
        var files = Directory.GetFiles(CorpusDir(target));
        Assert.NotEmpty(files);
        var broken = files.Order(StringComparer.Ordinal)
            .Select(f => (File: Path.GetFileName(f), Violation: Violation(WireTargets.Parse(target), File.ReadAllBytes(f))))
            .Where(x => x.Violation is not null)
            .Select(x => $"{target}/{x.File}: {x.Violation}")
            .ToList();
        Assert.True(broken.Count == 0, string.Join("\n", broken));
    }

    [Fact]
    public void The_corpus_holds_every_seed()
    {
        var missing = SeedCorpus.All()
            .Select(s => Path.Combine(WireTargets.Name(s.Target), s.Name))
            .Where(p => !File.Exists(Path.Combine(CorpusDir(""), p)))
            .ToList();
        Assert.True(missing.Count == 0,
            "not in the corpus (dotnet tests/Vfio.Fuzz/bin/Release/net10.0/Vfio.Fuzz.dll seed tests/Vfio.Fuzz/corpus): "
            + string.Join(", ", missing));
    }

    [Fact]
    public void Valid_encodings_of_every_structure_and_message_type_are_accepted()
    {
        var seeds = SeedCorpus.Valid().ToList();
        var bodies = seeds.Where(s => s.Target == WireTarget.Body).Select(s => (MessageType)s.Bytes[0]).ToHashSet();
        Assert.Equal(Enum.GetValues<MessageType>().ToHashSet(), bodies);
        Assert.Equal(WireTargets.All.ToHashSet(), seeds.Select(s => s.Target).ToHashSet());
        foreach (var s in seeds) Assert.True(Outcome.Accepted == Decode(s), $"{s.Target} {s.Name}: not accepted");
    }

    [Fact]
    public void Documented_malformed_inputs_are_refused()
    {
        var seeds = SeedCorpus.Malformed().ToList();
        Assert.Equal(WireTargets.All.ToHashSet(), seeds.Select(s => s.Target).ToHashSet());
        foreach (var s in seeds) Assert.True(Outcome.Refused == Decode(s), $"{s.Target} {s.Name}: not refused");
    }

    /// <summary>The fuzzer's first find: a DeviceDone without a digest whose digest field is not 0 is accepted, the digest ignored.</summary>
    [Fact]
    public void A_digest_field_without_its_flag_is_ignored()
    {
        var body = File.ReadAllBytes(Path.Combine(CorpusDir("body"), "device-done-digest-without-flag"));
        Assert.Equal(Outcome.Accepted, WireContract.Check(WireTarget.Body, body));
        Assert.Null(MessageCodec.Read<DeviceDoneMessage>(body.AsSpan(1)).Digest);
    }

    // The contract itself must catch the ways a decoder goes wrong: each of these decoders breaks it once.

    [Fact]
    public void The_contract_catches_a_decoder_that_lets_a_field_through_unchecked()
    {
        Assert.Equal(Outcome.Accepted, WireContract.Body<LaxFlag>([1, 0, 0, 0]));
        var e = Assert.Throws<ContractViolationException>(() => WireContract.Body<LaxFlag>([2, 0, 0, 0]));
        Assert.Contains("re-encodes differently", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_contract_catches_a_decoder_that_throws_anything_but_a_ProtocolException()
    {
        Assert.Equal(Outcome.Accepted, WireContract.Body<Unchecked>([3, 0, 0, 0]));
        var e = Assert.Throws<ContractViolationException>(() => WireContract.Body<Unchecked>([9, 0, 0, 0]));
        Assert.IsType<IndexOutOfRangeException>(e.InnerException);
    }

    [Fact]
    public void The_contract_catches_an_allocation_the_peer_sizes()
    {
        Assert.Equal(Outcome.Refused, WireContract.Body<Hoarding>([0, 1, 0, 0]));
        var e = Assert.Throws<ContractViolationException>(() => WireContract.Body<Hoarding>([0, 0, 0x10, 0]));
        Assert.Contains("allocated", e.Message, StringComparison.Ordinal);
    }

    private static Outcome Decode(Seed s) => Violation(s.Target, s.Bytes, out var outcome) is { } v
        ? throw new Xunit.Sdk.XunitException($"{s.Target} {s.Name}: {v}")
        : outcome;

    private static string? Violation(WireTarget target, byte[] input) => Violation(target, input, out _);

    /// <summary>The input checked on a thread of its own, so that a decoder that hangs fails the test instead of stopping it.</summary>
    private static string? Violation(WireTarget target, byte[] input, out Outcome outcome)
    {
        Outcome result = default;
        string? violation = null;
        var t = new Thread(() =>
        {
            try { result = WireContract.Check(target, input); }
            catch (ContractViolationException e) { violation = e.Message + (e.InnerException is { } i ? $" ({i})" : ""); }
        }) { IsBackground = true };
        t.Start();
        outcome = default;
        if (!t.Join(HangLimit)) return $"no answer after {HangLimit.TotalSeconds} s (a hang)";
        outcome = result;
        return violation;
    }

    /// <summary>Reads a 0/1 field as "anything but 0": the value 2 decodes, and re-encodes as 1.</summary>
    private readonly record struct LaxFlag(bool Set) : IMessage<LaxFlag>
    {
        public static MessageType Type => MessageType.Credit;
        public static int MaxBodySize => 4;
        public void Write(ref MessageWriter w) => w.U32(Set ? 1u : 0u);
        public static LaxFlag Read(ref MessageReader r) => new(r.U32() != 0);
    }

    /// <summary>Indexes a table by a field of the body without checking it.</summary>
    private readonly record struct Unchecked(uint Index) : IMessage<Unchecked>
    {
        private static readonly uint[] s_table = [0, 1, 2, 3];
        public static MessageType Type => MessageType.Credit;
        public static int MaxBodySize => 4;
        public void Write(ref MessageWriter w) => w.U32(Index);
        public static Unchecked Read(ref MessageReader r) => new(s_table[r.U32()]);
    }

    /// <summary>Allocates what a count in the body asks for, then refuses the body.</summary>
    private readonly record struct Hoarding : IMessage<Hoarding>
    {
        public static MessageType Type => MessageType.Credit;
        public static int MaxBodySize => 4;
        public void Write(ref MessageWriter w) { }

        public static Hoarding Read(ref MessageReader r)
        {
            var hoard = new byte[r.U32()];
            throw r.Malformed($"refused after allocating {hoard.Length} bytes");
        }
    }
}
